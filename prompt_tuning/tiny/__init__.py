"""The bundled tiny LM-adapted T5: its toy corpus, objectives and asset paths."""
