"""`python -m tasks.list`: every task with its metrics, counts under mock data."""
import os
import subprocess
import sys

import seqio

import tasks
from tasks import list as task_list
from tasks import vocab


def test_lists_every_task_and_mixture_with_metrics(capsys):
  tasks.register_all()
  assert task_list.main([]) == 0
  lines = capsys.readouterr().out.splitlines()
  names = [line.split("\t")[0] for line in lines]
  assert names == sorted(seqio.TaskRegistry.names()) + sorted(
      seqio.MixtureRegistry.names())
  by_name = {line.split("\t")[0]: line for line in lines}
  assert by_name["super_glue_cb_v102"].endswith(
      "metrics=mean_3class_f1,accuracy,invalid_predictions "
      "labels=entailment|contradiction|neutral")
  assert "splits=test\t" in by_name["super_glue_axb_v102"]
  assert "metrics=bleu,rouge1,rouge2,rougeL,rougeLsum" in by_name["web_nlg"]
  assert "metrics=em,f1" in by_name["squad_v010_allanswers"]
  assert "\tmixture\t" in by_name["super_glue_v102_proportional"]


def test_filter_without_match_fails(capsys):
  assert task_list.main(["--filter", "^no_such_task$"]) == 1
  assert "No task or mixture matches" in capsys.readouterr().err


def test_mock_counts_examples_per_split(capsys, t5_vocab_path, monkeypatch):
  monkeypatch.setenv(vocab.ENV_VAR, t5_vocab_path)
  assert task_list.main(["--mock", "--mock_examples", "2", "--filter",
                         "^(super_glue_rte_v102|web_nlg_n50)$"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith(
      "super_glue_rte_v102\ttask\tsplits=test=2,train=2,validation=2\t")
  # Under mock data no example has a seen WebNLG category.
  assert "test_seen=0,test_unseen=2,train=2,validation=2" in lines[1]


def test_module_entry_point(t5_vocab_path):
  env = dict(os.environ, PROMPT_TUNING_VOCAB=t5_vocab_path,
             TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(
      [sys.executable, "-m", "tasks.list", "--filter", "^glue_sst2_v200$"],
      capture_output=True, text=True, env=env,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(tasks.__file__))),
      timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == (
      "glue_sst2_v200\ttask\tsplits=test,train,validation\t"
      "metrics=accuracy,invalid_predictions labels=negative|positive")


def test_lists_the_new_names_with_their_metrics(capsys):
  tasks.register_all()
  assert task_list.main(["--filter", "stsb|cola|sentinel|_from_|v001|"
                         "context_free|_span|leave_one_out|task_index_|"
                         "_examples$|^mt5_|wsc_dpr"]) == 0
  by_name = {line.split("\t")[0]: line
             for line in capsys.readouterr().out.splitlines()}
  expect = {
      "glue_stsb_v002": "metrics=pearson_corrcoef,spearman_corrcoef",
      "taskless_glue_cola_v200": "metrics=matthews_corrcoef,"
                                 "invalid_predictions",
      "super_glue_rte_v102_1_sentinel": "metrics=accuracy,invalid_predictions",
      "glue_mrpc_from_qqp_v002": "metrics=f1,accuracy,invalid_predictions "
                                 "labels=not_duplicate|duplicate",
      "mrqa_textbookqa_v001": "metrics=em,f1",
      "squad_v010_context_free": "metrics=em,f1",
      "squad_v010_allanswers_span": "metrics=em,f1",
      "task_index_glue_qnli_v002_examples": "metrics=accuracy,"
                                            "invalid_predictions",
      "mt5_super_glue_cb_v102": "metrics=mean_3class_f1,accuracy,"
                                "invalid_predictions",
      "mt5_task_index_super_glue_wsc_v102_simple_eval_examples":
          "metrics=accuracy",
      "leave_one_out_squad_v010_allanswers": "\tmixture\t",
      "wsc_dpr_simple_proportional": "\tmixture\t",
      "mt5_glue_v002_proportional": "\tmixture\t",
  }
  for name, text in expect.items():
    assert text in by_name[name], (name, by_name.get(name))


def test_mock_counts_new_tasks(capsys, t5_vocab_path, monkeypatch):
  monkeypatch.setenv(vocab.ENV_VAR, t5_vocab_path)
  monkeypatch.setenv(vocab.MT5_ENV_VAR, t5_vocab_path)  # Standing in.
  assert task_list.main([
      "--mock", "--mock_examples", "2", "--filter",
      "^(glue_stsb_v002|mt5_task_index_glue_mnli_v200_examples)$"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith(
      "glue_stsb_v002\ttask\tsplits=test=2,train=2,validation=2\t")
  assert lines[1].startswith(
      "mt5_task_index_glue_mnli_v200_examples\ttask\tsplits=test_matched=2,"
      "test_mismatched=2,train=2,validation_matched=2,"
      "validation_mismatched=2\tmetrics=accuracy,invalid_predictions")
