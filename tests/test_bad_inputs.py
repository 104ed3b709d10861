"""Bad-input corpus (``tests/data/bad/``, table in its README.md).

Every case either raises a project error from the loading/validation boundary whose message names the
file and line (JSONL) or the file/field (configs) or the field (rewards), or gets its documented handling;
none ends in a traceback from inside JAX. Adding a case = a file + a README row + a ``CASES`` entry.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import pytest

from roro_jax.cli import main
from roro_jax.config import ConfigError, load_config
from roro_jax.eval.report import report_from_file
from roro_jax.pairs import NoPairsWarning, pairs_from_file, read_pairs
from roro_jax.rl.advantages import group_advantages_jit
from roro_jax.rl.rewards import compute_rewards
from roro_jax.rollout import RolloutConfig
from roro_jax.router.features import logprob_features
from roro_jax.rubric.format import parse_rubric
from roro_jax.rubric.serialize import SerializeConfig, serialize_trajectory
from roro_jax.store import StoreCorruptError, TrajectoryStore, read_trajectory_file
from roro_jax.types import InputError, RecordError, Step, Trajectory, pad_trajectories
from roro_jax.worlds.replay import EpisodeFormatError, EpisodeWarning, load_episodes

BAD = Path(__file__).parent / "data" / "bad"
REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- loaders
def load_trajectories(p: Path) -> list[Trajectory]:
    return list(TrajectoryStore(p).iter())


def load_pairs_from_file(p: Path):
    """What ``roro pairs --trajectories P --out ...`` runs (``pairs_from_file``), into a temporary folder."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        stats = pairs_from_file(p, Path(d) / "pairs.jsonl")
        return stats, (Path(d) / "pairs.jsonl").read_text()


def load_points_report(p: Path):
    """What ``roro eval --points P --out DIR`` runs (``report_from_file``), into a temporary folder."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return report_from_file(p, d)


def load_rewards(p: Path):
    spec = json.loads(p.read_text())  # Python's json reads NaN / Infinity tokens
    r, _ = compute_rewards(spec["batch"], spec["weights"])
    # the jitted variant (one compile instead of op-by-op): the same checks, which look only at shapes
    return np.asarray(r), np.asarray(group_advantages_jit(r, group_size=spec["group_size"]))


def load_features(p: Path) -> np.ndarray:
    spec = json.loads(p.read_text())
    f = jax.jit(logprob_features)  # jitted, as the rollout uses it
    return np.asarray(f(*(np.asarray(spec[k], np.float32) for k in ("topk_logprobs", "chosen_logprobs", "mask"))))


def load_rubric(p: Path):
    return parse_rubric(p.read_text(encoding="utf-8"))


def load_rubric_bytes(p: Path):
    data = p.read_bytes()
    return parse_rubric(data), parse_rubric(data.decode("utf-8", errors="replace"))


# ------------------------------------------------------------------------------------ expectations
@dataclass(frozen=True)
class Raises:
    exc: type[BaseException]
    says: tuple[str, ...]
    line: int | None = None  # JSONL: the message names "<file>:<line>"
    names_file: bool = True


@dataclass(frozen=True)
class Handled:
    check: Callable[..., None]  # check(result, warnings, tmp_path)


def _torn(trajs, warns, tmp):
    assert [t.sample_idx for t in trajs] == [0, 1]
    assert any("traj_torn_last_line.jsonl:3: torn last line" in str(w.message) for w in warns)


UNICODE = {"nul": "a\x00b", "rtl": "\u200fשלום\u202e 42 \u202c", "emoji": "👩\u200d👩\u200d👧 ok 🙂",
           "combining": "e\u0301 vs \u00e9, Z\u0335\u0321a\u0336l\u0337g\u0338o", "cjk": "二加二等于四",
           "bom": "\ufeffstart", "line_sep": "a\u2028b\u2029c", "crlf": "x\r\ny", "astral_math": "𝑥² + 𝑦² = 𝑧²"}


def _no_pairs(res, warns, tmp):
    stats, text = res
    assert text == "" and stats["trajectories"] == 2 and stats["queries"] == 1
    (w,) = [w for w in warns if issubclass(w.category, NoPairsWarning)]
    assert "traj_no_pairs.jsonl: 0 preference pairs from 2 trajectories of 1 queries" in str(w.message)


def _unicode(trajs, warns, tmp):
    (t,) = trajs
    assert [s.text for s in t.steps] == list(UNICODE.values())
    assert (t.query_id, t.answer_text, t.meta) == ("q-ünï-🙂", "٤", {"note": "漢字"})
    st = TrajectoryStore(tmp / "copy.jsonl")
    assert st.add(t)
    (back,) = TrajectoryStore(tmp / "copy.jsonl").iter()
    assert back.to_dict() == t.to_dict()


def _zero_steps(trajs, warns, tmp):
    assert [len(t.steps) for t in trajs] == [0, 0]
    arrays = pad_trajectories(trajs, n_features=3)
    assert arrays["mask"].shape == (2, 1) and not arrays["mask"].any()
    assert serialize_trajectory(trajs[0]).startswith("n0 e0 L0 S0 f-")


def _empty_step_text(trajs, warns, tmp):
    (t,) = trajs
    assert t.steps[0].text == "" and t.steps[0].token_ids == []
    np.testing.assert_array_equal(pad_trajectories(trajs)["mask"], [[1.0, 1.0]])


def _over_max_steps(trajs, warns, tmp):
    assert len(trajs[0].steps) == 5
    with pytest.raises(ValueError, match=r"trajectory q1/srm/0 has 5 steps > max_steps=4"):
        pad_trajectories(trajs, max_steps=4)


def _long_step(trajs, warns, tmp):
    (t,) = trajs
    assert len(t.steps[0].text) == 1_000_000 and len(t.steps[0].token_ids) > RolloutConfig().max_step_tokens
    text = serialize_trajectory(t, SerializeConfig(style="verbose", max_chars=400, step_text_chars=40))
    assert len(text) < 500


def _nan_outcome(res, warns, tmp):
    r, adv = res
    assert np.isnan(r[1]) and np.isfinite(r[[0, 2, 3]]).all()
    assert np.isfinite(adv).all() and adv[0] == adv[1] == 0.0 and adv[2] > 0 > adv[3]


def _zero_variance(res, warns, tmp):
    r, adv = res
    assert np.all(adv[:2] == 0.0) and adv[2] > 0 > adv[3]


def _all_nan_group(res, warns, tmp):
    r, adv = res
    assert np.all(adv[:2] == 0.0) and adv[2] > 0 > adv[3]


def _features(f, warns, tmp):
    assert f.shape == (16,) and np.isfinite(f).all()
    assert 0.0 <= f[0] <= 1.0  # mean chosen-token probability


def _rubric_garbage(res, warns, tmp):
    as_bytes, as_text = res
    assert not as_bytes.ok and "not text" in as_bytes.reason
    assert not as_text.ok and as_text.reason


def _rubric_rejected(reason):
    def check(r, warns, tmp):
        assert not r.ok and r.rubric is None and reason in r.reason, r.reason
    return check


def _rubric_unicode_ok(r, warns, tmp):
    assert r.ok, r.reason
    assert [c.weight for c in r.rubric.criteria] == pytest.approx([0.5, 0.5])


# ------------------------------------------------------------------------ generated (too big to commit)
def _gen_long_step(path: Path) -> None:
    step = Step(index=0, text="x" * 1_000_000, token_ids=list(range(2000)), features=[0.5, 0.25, 0.125],
                small_tokens=2000)
    path.write_text(Trajectory("q1", 0, "srm", steps=[step]).to_json() + "\n")


def _gen_enormous_rubric(path: Path) -> None:
    line = "1. [w=0.5] The route escalates the step where the small model's confidence drops.\n"
    path.write_text(line * (5_000_000 // len(line) + 1))


GENERATED = {"traj_long_step.jsonl": _gen_long_step, "rubric_enormous.txt": _gen_enormous_rubric}

S, T = StoreCorruptError, load_trajectories
CASES: dict[str, tuple[Callable[[Path], Any], Raises | Handled]] = {
    # trajectory JSONL
    "traj_malformed_middle.jsonl": (T, Raises(S, ("malformed JSON",), line=2)),
    "traj_torn_last_line.jsonl": (T, Handled(_torn)),
    "traj_blank_line.jsonl": (T, Raises(S, ("blank line",), line=2)),
    "traj_missing_field.jsonl": (T, Raises(S, ("missing required field 'policy_id'",), line=2)),
    "traj_wrong_type_sample_idx.jsonl": (T, Raises(S, ("field 'sample_idx'", "integer", "'abc'"), line=2)),
    "traj_wrong_type_steps.jsonl": (T, Raises(S, ("field 'steps'", "list of step objects"), line=2)),
    "traj_wrong_type_token_ids.jsonl": (T, Raises(S, ("field 'steps[0].token_ids[1]'", "integer"), line=2)),
    "traj_bad_action.jsonl": (T, Raises(S, ("field 'steps[1].action'", "0 (keep) or 1 (escalate)"), line=2)),
    "traj_unknown_field.jsonl": (T, Raises(S, ("unknown field 'reward'",), line=2)),
    "traj_not_object.jsonl": (T, Raises(S, ("expected a JSON object, got list",), line=3)),
    "traj_nan_features.jsonl": (T, Raises(S, ("field 'steps[0].features[1]'", "finite", "nan"), line=2)),
    "traj_inf_logp.jsonl": (T, Raises(S, ("field 'steps[1].action_logp'", "finite", "-inf"), line=2)),
    "traj_lone_surrogate.jsonl": (T, Raises(S, ("field 'steps[0].text'", "lone surrogate U+D800"), line=2)),
    "traj_invalid_utf8.jsonl": (T, Raises(S, ("not valid UTF-8", "0xff"), line=2)),
    "traj_unicode_ok.jsonl": (T, Handled(_unicode)),
    "traj_zero_steps.jsonl": (T, Handled(_zero_steps)),
    "traj_empty_step_text.jsonl": (T, Handled(_empty_step_text)),
    "traj_over_max_steps.jsonl": (T, Handled(_over_max_steps)),
    "traj_long_step.jsonl": (T, Handled(_long_step)),
    "traj_negative_tokens.jsonl": (T, Raises(S, ("field 'steps[1].large_tokens'", "non-negative integer", "-12"),
                                             line=2)),
    "traj_negative_small_tokens.jsonl": (T, Raises(S, ("field 'steps[0].small_tokens'", "non-negative", "-3"),
                                                   line=2)),
    "traj_negative_token_id.jsonl": (T, Raises(S, ("field 'steps[0].token_ids[1]'", "non-negative", "-4"), line=2)),
    "traj_negative_sample_idx.jsonl": (T, Raises(S, ("field 'sample_idx'", "non-negative", "-1"), line=2)),
    # trajectory files handed to a command as a whole (roro pairs / roro rubric --trajectories)
    "traj_duplicate_key.jsonl": (read_trajectory_file, Raises(S, ("duplicate trajectory key", "('q1', 0, 'srm')",
                                                                  "first on line 1"), line=3)),
    "traj_empty.jsonl": (read_trajectory_file, Raises(S, ("holds no trajectory", "empty file"))),
    "traj_only_torn_line.jsonl": (read_trajectory_file, Raises(S, ("holds no trajectory",))),
    "traj_no_pairs.jsonl": (load_pairs_from_file, Handled(_no_pairs)),
    # rewards and advantages
    "rewards_nan_outcome.json": (load_rewards, Handled(_nan_outcome)),
    "rewards_inf_term.json": (load_rewards, Raises(ValueError, ("reward term 'cost'", "index 1"), names_file=False)),
    "rewards_zero_variance.json": (load_rewards, Handled(_zero_variance)),
    "rewards_all_nan_group.json": (load_rewards, Handled(_all_nan_group)),
    "rewards_not_divisible.json": (load_rewards, Raises(ValueError, ("not a multiple of group_size=3",),
                                                        names_file=False)),
    "rewards_zero_group_size.json": (load_rewards, Raises(ValueError, ("group_size must be a positive integer",),
                                                          names_file=False)),
    "rewards_empty_batch.json": (load_rewards, Raises(ValueError, ("rewards is empty",), names_file=False)),
    # router features
    "features_nan_logprobs.json": (load_features, Handled(_features)),
    # configs
    "config_unknown_key.yaml": (load_config, Raises(ConfigError, ("config key 'grpo.lrr'",))),
    "config_wrong_type.yaml": (load_config, Raises(ConfigError, ("config key 'grpo.lr'", "'fast'"))),
    "config_section_scalar.yaml": (load_config, Raises(ConfigError, ("config key 'grpo'",))),
    "config_bad_choice.yaml": (load_config, Raises(ConfigError, (
        "config key 'grpo.kl'", "unknown KL estimator 'k9'; registered: ['exact', 'k1', 'k2', 'k3']"))),
    "config_bad_value.yaml": (load_config, Raises(ConfigError, ("similar_cost",))),
    "config_top_level_list.yaml": (load_config, Raises(ConfigError, ("top level must be a mapping",))),
    "config_yaml_syntax.yaml": (load_config, Raises(ConfigError, ("line 1",))),
    "config_binary.yaml": (load_config, Raises(ConfigError, ("control characters",))),
    "config_negative_count.yaml": (load_config, Raises(ConfigError, ("config key 'grpo.group_size'", "-4",
                                                                     "must be >= 1"))),
    "config_scalar_for_list.yaml": (load_config, Raises(ConfigError, ("config key 'router.hidden'",
                                                                      "write router.hidden=[128]"))),
    # pairs JSONL
    "pairs_malformed_line.jsonl": (read_pairs, Raises(InputError, ("malformed JSON",), line=2)),
    "pairs_missing_field.jsonl": (read_pairs, Raises(InputError, ("missing field(s) ['kind']",), line=2)),
    "pairs_bad_kind.jsonl": (read_pairs, Raises(InputError, ("kind must be one of", "'vibes'"), line=2)),
    "pairs_wrong_type.jsonl": (read_pairs, Raises(InputError, ("field 'margin'", "'high'"), line=2)),
    "pairs_nan_margin.jsonl": (read_pairs, Raises(InputError, ("field 'margin'", "finite"), line=2)),
    "pairs_same_trajectory.jsonl": (read_pairs, Raises(InputError, ("same trajectory",), line=2)),
    "pairs_not_object.jsonl": (read_pairs, Raises(InputError, ("must be a JSON object",), line=2)),
    "pairs_duplicate.jsonl": (read_pairs, Raises(InputError, ("duplicate pair", "first on line 1"), line=3)),
    # point records (roro eval --points)
    "points_empty.jsonl": (load_points_report, Raises(InputError, ("no point records", "empty file"))),
    "points_no_srm.jsonl": (load_points_report, Raises(InputError, ("role='srm'", "found 0"))),
    # rubric text
    "rubric_garbage.bin": (load_rubric_bytes, Handled(_rubric_garbage)),
    "rubric_no_criteria.txt": (load_rubric, Handled(_rubric_rejected("line 1 is not"))),
    "rubric_unicode_ok.txt": (load_rubric, Handled(_rubric_unicode_ok)),
    "rubric_enormous.txt": (load_rubric, Handled(_rubric_rejected("too long"))),
}


# ------------------------------------------------------------------------------ replay episodes (episodes)
def load_episode_file(p: Path):
    return load_episodes(p)


def _episodes_bom(eps, warns, tmp):
    assert [e.id for e in eps] == ["syn_00000", "syn_00001", "syn_00002"]
    assert not [w for w in warns if issubclass(w.category, EpisodeWarning)]


def _episodes_totals_off(eps, warns, tmp):
    assert len(eps) == 3
    (w,) = [w for w in warns if issubclass(w.category, EpisodeWarning)]
    msg = str(w.message)
    assert "episodes_token_totals_off.jsonl: in 1 of 3 episodes" in msg
    assert "line 2 (id 'syn_00001'): sum of srm_token_counts 66 vs srm_total_tokens 106" in msg


E, EP = EpisodeFormatError, load_episode_file
EPISODE_CASES: dict[str, tuple[Callable[[Path], Any], Raises | Handled]] = {
    "episodes_bad_prm_score.jsonl": (EP, Raises(E, ("srm_prm_scores[3] = None is not a score in [0, 1]",), line=2)),
    "episodes_length_mismatch.jsonl": (EP, Raises(E, ("lrm_steps, lrm_prm_scores and lrm_token_counts",), line=2)),
    "episodes_malformed_json.jsonl": (EP, Raises(E, ("malformed JSON",), line=2)),
    "episodes_bad_total.jsonl": (EP, Raises(E, ("srm_total_tokens = 'many' is not a token count",), line=2)),
    "episodes_missing_field.jsonl": (EP, Raises(E, ("missing field(s) ['lrm_correct']",), line=2)),
    "episodes_invalid_utf8.jsonl": (EP, Raises(E, ("not valid UTF-8", "0xff"), line=2)),
    "episodes_bom.jsonl": (EP, Handled(_episodes_bom)),
    "episodes_token_totals_off.jsonl": (EP, Handled(_episodes_totals_off)),
}
CASES.update(EPISODE_CASES)


def case_path(name: str, tmp_path: Path) -> Path:
    if name in GENERATED:
        GENERATED[name](tmp_path / name)
        return tmp_path / name
    return BAD / name


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name, tmp_path):
    load, expect = CASES[name]
    path = case_path(name, tmp_path)
    if isinstance(expect, Raises):
        with pytest.raises(expect.exc) as ei:
            load(path)
        msg = str(ei.value)
        assert "\n" not in msg, msg
        if expect.line is not None:
            assert f"{name}:{expect.line}:" in msg, msg
        elif expect.names_file:
            assert name in msg, msg
        for s in expect.says:
            assert s in msg, msg
        return
    with warnings.catch_warnings(record=True) as warns:
        warnings.simplefilter("always")
        result = load(path)
    expect.check(result, warns, tmp_path)


def test_corpus_manifest_and_readme_agree():
    files = {p.name for p in BAD.iterdir() if p.name != "README.md"}
    assert files == set(CASES) - set(GENERATED)
    readme = (BAD / "README.md").read_text()
    for name in CASES:
        assert f"`{name}`" in readme, f"{name} has no row in tests/data/bad/README.md"


TRAJ_ERRORS = sorted(n for n, (load, e) in CASES.items() if load is load_trajectories and isinstance(e, Raises))


@pytest.mark.parametrize("name", TRAJ_ERRORS)
def test_writer_side_calls_never_truncate_a_bad_line(name, tmp_path):
    """Only a torn last line may be truncated by a writer; a bad complete line (last or not) is kept."""
    p = tmp_path / name
    shutil.copy(BAD / name, p)
    before = p.read_bytes()
    try:
        TrajectoryStore(p).keys()  # checks key fields only: may pass when the bad field is another one
    except StoreCorruptError as e:
        assert f"{name}:{CASES[name][1].line}:" in str(e)
    assert p.read_bytes() == before


def test_nan_features_stop_before_the_router_update(tmp_path):
    (t,) = load_trajectories(BAD / "traj_empty_step_text.jsonl")
    t.steps[1].features[2] = float("nan")
    with pytest.raises(ValueError, match=r"trajectory q1/srm/0 step 1: features\[2\] is nan"):
        pad_trajectories([t])
    with pytest.raises(RecordError, match=r"\('q1', 0, 'srm'\).*steps\[1\]\.features\[2\]"):
        TrajectoryStore(tmp_path / "t.jsonl").add(t)
    assert not (tmp_path / "t.jsonl").read_bytes()  # nothing written
    t.steps[1].features[2] = 0.0
    t.steps[0].action_logp = math.inf
    with pytest.raises(ValueError, match=r"trajectory q1/srm/0 step 0: action_logp is inf"):
        pad_trajectories([t])


# --------------------------------------------------------------------------------------------- CLI
def test_cli_subprocess_bad_trajectories_one_line_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "roro_jax.cli", "pairs", "--trajectories",
                          str(BAD / "traj_malformed_middle.jsonl"), "--out", str(tmp_path / "p.jsonl")],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("roro:")]
    assert len(errors) == 1 and errors[0].startswith("roro: error: ")
    assert "traj_malformed_middle.jsonl:2: " in errors[0] and "malformed JSON" in errors[0]
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize("argv,says", [
    (["pairs", "--trajectories", str(BAD / "traj_nan_features.jsonl")], "traj_nan_features.jsonl:2: "),
    (["pairs", "--trajectories", str(BAD / "no_such_file.jsonl")], "not found: "),
    (["rubric", "--trajectories", str(BAD / "traj_zero_steps.jsonl"), "--pairs", str(BAD / "pairs_bad_kind.jsonl")],
     "pairs_bad_kind.jsonl:2: kind must be one of"),
    (["rubric", "--trajectories", str(BAD / "no_such_file.jsonl"), "--pairs", str(BAD / "pairs_bad_kind.jsonl")],
     "no_such_file.jsonl does not exist"),
    (["rubric", "--trajectories", str(BAD / "traj_zero_steps.jsonl"), "--pairs", str(BAD / "pairs_bad_kind.jsonl"),
      "--queries", str(BAD / "config_yaml_syntax.yaml")], "not a JSON object of query id -> query text"),
    (["pairs", "--trajectories", str(BAD / "traj_negative_tokens.jsonl")],
     "traj_negative_tokens.jsonl:2: not a trajectory record: field 'steps[1].large_tokens'"),
    (["pairs", "--trajectories", str(BAD / "traj_duplicate_key.jsonl")],
     "traj_duplicate_key.jsonl:3: duplicate trajectory key"),
    (["pairs", "--trajectories", str(BAD / "traj_empty.jsonl")], "traj_empty.jsonl: trajectory file holds no"),
    (["rubric", "--trajectories", str(BAD / "traj_duplicate_key.jsonl"), "--pairs", str(BAD / "pairs_bad_kind.jsonl")],
     "traj_duplicate_key.jsonl:3: duplicate trajectory key"),
    (["eval", "--points", str(BAD / "points_empty.jsonl"), "--out", "REPORT"], "points_empty.jsonl: no point records"),
    (["config", "-c", str(BAD / "config_negative_count.yaml")], "'grpo.group_size'"),
    (["config", "-c", str(BAD / "config_bad_choice.yaml")], "config_bad_choice.yaml"),
    (["config", "-c", str(BAD / "config_yaml_syntax.yaml")], "config_yaml_syntax.yaml"),
    (["config", "rubric.rubricor.output=nope"], "config key 'rubric.rubricor.output' (command line): 'nope' is not"),
    (["config", "rubric.judge.layout=nope"], "config key 'rubric.judge.layout' (command line): 'nope' is not"),
    (["config", "rubric.rubricor.prompt=nope"], "config key 'rubric.rubricor.prompt' (command line): 'nope' is not"),
    (["config", "pairs.process_label=nope"],
     "config key 'pairs.process_label' (command line): unknown process label 'nope'; registered: ['checkpoints', "
     "'quality']"),
    (["pairs", "--trajectories", str(BAD / "traj_no_pairs.jsonl"), "pairs.process_label=checkpoints"],
     "config key 'pairs.process_label': 'checkpoints' scores a route by the reference steps of its toy problem, "
     "which needs the query texts"),
])
def test_cli_in_process_bad_input_exits_2_with_one_line(argv, says, tmp_path, capsys):
    if argv[0] == "pairs":
        argv = [*argv, "--out", str(tmp_path / "p.jsonl")]
    argv = [str(tmp_path / "report") if a == "REPORT" else a for a in argv]
    assert main([*argv, f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("roro:")]
    assert len(lines) == 1 and lines[0].startswith("roro: error: ") and says in lines[0], err


# ------------------------------------------------------------------------------ CLI: the replay world's inputs
REPLAY_SMALL = ["train.updates=1", "sweep.lambda_c=[0.1]", "reward.weights.process=0", "eval.n_boot=10"]


def test_cli_subprocess_bad_episode_file_one_line_exit_2(tmp_path):
    """A malformed episode row (``EpisodeFormatError``) is one ``roro: error:`` line and status 2, not a
    traceback with status 1."""
    out = subprocess.run([sys.executable, "-m", "roro_jax.cli", "eval", "-c", "configs/replay_math500.yaml",
                          f"replay.episodes={BAD / 'episodes_bad_prm_score.jsonl'}", f"out_dir={tmp_path}",
                          *REPLAY_SMALL], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("roro:")]
    assert errors == [f"roro: error: {BAD / 'episodes_bad_prm_score.jsonl'}:2: srm_prm_scores[3] = None is not a "
                      "score in [0, 1]"], out.stderr


@pytest.mark.parametrize("overrides,says", [
    ([f"replay.episodes={BAD / 'episodes_bom.jsonl'}", "replay.extra_test=[/no/such/dir/aime.jsonl]"],
     "config key 'replay.extra_test[0]': episode file or folder '/no/such/dir/aime.jsonl' does not exist"),
    (["replay.episodes=/no/such/dir/math.jsonl", "replay.extra_test=[]"],
     "config key 'replay.episodes': episode file or folder '/no/such/dir/math.jsonl' does not exist"),
    ([f"replay.episodes={BAD / 'episodes_bom.jsonl'}", "replay.outcome_rule=oracle"],
     "config key 'replay.outcome_rule' (command line): unknown outcome rule 'oracle'; registered: ['both', "
     "'either', 'last_writer', 'majority', 'prm_gate']"),
    ([f"replay.episodes={BAD / 'episodes_bom.jsonl'}", f"replay.extra_test=[{BAD / 'episodes_invalid_utf8.jsonl'}]"],
     "episodes_invalid_utf8.jsonl:2: not valid UTF-8"),
    ([f"replay.episodes={BAD / 'episodes_bom.jsonl'}",
      f"replay.extra_test=[{BAD / 'episodes_bom.jsonl'},{BAD / 'episodes_bom.jsonl'}]"],
     "config key 'replay.extra_test[1]'"),
])
def test_cli_replay_inputs_checked_before_training(overrides, says, tmp_path, capsys):
    """Every replay input (episodes, each extra test set, the outcome rule) is checked before any router
    trains: one ``roro: error:`` line naming the key or ``file:line``, status 2, and nothing trained."""
    argv = ["eval", "-c", str(REPO_ROOT / "configs/replay_math500.yaml"), f"out_dir={tmp_path}", *REPLAY_SMALL,
            *overrides]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EpisodeWarning)  # the same file twice shares its ids with training
        assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("roro:")]
    assert len(lines) == 1 and lines[0].startswith("roro: error: ") and says in lines[0], err
    assert not list(tmp_path.glob("router_lc*")), "a router trained before the inputs were checked"


def test_cli_zero_pairs_is_a_warning_line(tmp_path, capsys):
    """A trajectory file that yields no pair: exit 0, an empty pairs file and one ``roro: warning:`` line."""
    out = tmp_path / "p.jsonl"
    assert main(["pairs", "--trajectories", str(BAD / "traj_no_pairs.jsonl"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("roro:")]
    assert len(lines) == 1 and lines[0].startswith("roro: warning: ") and "0 preference pairs" in lines[0], err
    assert out.read_text() == ""
