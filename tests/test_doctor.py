"""`proximo doctor`: the text report and the self-contained HTML page on real (short) run directories."""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from proximo.cli import main
from proximo.diagnostics import POSITIVE, RULES, DiagnosticsConfig, Panel, Rule, median_check, threshold
from proximo.doctor import examine, html_report, outside_share, panels, ratio_frames, text_report
from proximo.errors import ProximoError

COMMON = ["--num-envs", "8", "--n-steps", "32", "--batch-size", "256", "--eval-episodes", "2", "--quiet",
          "--no-tensorboard"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short CartPole runs: one with a 50x learning rate and 30 epochs, one on the cartpole preset."""
    root = tmp_path_factory.mktemp("doctor")
    broken, healthy = root / "broken", root / "healthy"
    assert main(["train", "CartPole-v1", "--run-dir", str(broken), "--learning-rate", "0.05", "--n-epochs", "30",
                 "--total-steps", "8000", *COMMON]) == 0
    assert main(["train", "CartPole-v1", "--preset", "cartpole", "--run-dir", str(healthy),
                 "--total-steps", "30000", *COMMON]) == 0
    return broken, healthy


def test_doctor_names_the_kl_failure_and_writes_html(runs, tmp_path, capsys):
    broken, _ = runs
    capsys.readouterr()
    page = tmp_path / "report.html"
    assert main(["doctor", str(broken), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "[kl_spike]" in out and "evidence:" in out and "fix:" in out and "diag_kl_max=0.05" in out
    assert "healthy" not in out.split("\n\n")[1]
    text = page.read_text()
    for marker in ("panel-learning-curve", "panel-approx_kl", "panel-clip_fraction", "panel-entropy",
                   "panel-explained_variance", "panel-value_loss", "panel-grad_norm", "ratio-slider",
                   "ratio-prev", "ratio-next", "ratio-data", "verdict-findings"):
        assert f"id='{marker}'" in text, marker
    # the fired rule is marked on its panel
    kl_panel = text.split("id='panel-approx_kl'>")[1].split("</svg>")[0]
    assert 'data-rule="kl_spike"' in kl_panel
    # self-contained: nothing loaded from elsewhere (the SVG namespace URI is a name, not a fetch)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text and "<link" not in text
    frames = json.loads(text.split("id='ratio-data'>")[1].split("</script>")[0])
    assert len(frames) == len(examine(broken).record.rows) and len(frames[0]["counts"]) == 40


def test_doctor_reports_a_healthy_run(runs, capsys):
    _, healthy = runs
    capsys.readouterr()
    assert main(["doctor", str(healthy)]) == 0
    out = capsys.readouterr().out
    assert "healthy: none of the 8 applicable rules fired" in out
    assert "not checked (statistic not logged, or a rule of the other kind of run): reward_hacking" in out
    assert "verdict-healthy" in html_report(examine(healthy))


def test_doctor_agrees_with_the_live_warnings(runs):
    broken, _ = runs
    report = examine(broken)
    live = [(r["rule"], r["start_update"]) for r in report.record.live_warnings]
    assert live and live == [(e.rule, e.start_update) for e in report.episodes]


def test_ratio_share_outside_band():
    counts = [0] * 40
    counts[19] = 10  # r in [0.95, 1.00): inside the band
    assert outside_share(counts, 0.2) == 0.0
    counts[30] = 10  # r in [1.50, 1.55): outside
    assert outside_share(counts, 0.2) == pytest.approx(0.5)
    edge = [0] * 40
    edge[24] = 10  # r in [1.20, 1.25) with eps 0.22: the top 3/5 of the bin lies outside
    assert outside_share(edge, 0.22) == pytest.approx(0.6)
    # the observed ratio range narrows where in a bin the mass can lie: [0.97, 0.995] with band [0.99, 1.01]
    narrow = [0] * 40
    narrow[19] = 10
    assert outside_share(narrow, 0.01, r_min=0.97, r_max=0.995) == pytest.approx(0.8)


def test_ratio_frames_count_ratios_beyond_the_histogram(runs):
    broken, _ = runs
    report = examine(broken)
    rollout = 8 * 32
    for frame, row in zip(ratio_frames(report), report.record.rows):
        assert sum(frame["counts"]) + frame["beyond"] == rollout
        assert 0.0 <= frame["outside"] <= 1.0 and frame["eps"] == row["clip_range"]  # eps 0.2 > one bin
        if row["ratio_max"] > 2.0:
            assert frame["beyond"] > 0


def test_doctor_user_errors(tmp_path, capsys):
    assert main(["doctor", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["doctor", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no metrics" in err


def test_doctor_reads_metrics_csv_when_jsonl_missing(runs, tmp_path):
    broken, _ = runs
    copy = tmp_path / "csv_only"
    copy.mkdir()
    (copy / "metrics.csv").write_text((broken / "metrics.csv").read_text())
    (copy / "config.json").write_text((broken / "config.json").read_text())
    report = examine(copy)
    assert "kl_spike" in {e.rule for e in report.episodes}
    assert ratio_frames(report) == [] and "[kl_spike]" in text_report(report)


def test_doctor_keeps_the_last_row_of_an_update_logged_twice(tmp_path):
    # a run resumed from an older checkpoint logs updates 21-30 again; the second run's rows count
    rows = [{"update": u, "approx_kl": 0.005, "entropy": 0.6} for u in range(1, 31)]
    rows += [{"update": u, "approx_kl": 0.3, "entropy": 0.6} for u in range(21, 41)]
    (tmp_path / "updates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = examine(tmp_path)
    assert [r["update"] for r in report.record.rows] == list(range(1, 41))
    assert report.record.rows[25]["approx_kl"] == 0.3
    assert [(e.rule, e.start_update) for e in report.episodes] == [("kl_spike", 21)]  # 0.3 > 5 x diag_kl_max: a spike at once


def test_doctor_on_an_llm_run_names_the_kl_blowup(tmp_path, capsys):
    # rows as proximo/llm logs them: reward, kl_ref (nats per token), response_length
    rows = [{"update": u, "global_step": 64 * u, "reward": 0.1 + 0.01 * u, "kl_ref": 0.5 * u,
             "response_length": 20.0, "entropy": 1.5, "clip_fraction": 0.05, "approx_kl": 0.01}
            for u in range(1, 61)]
    (tmp_path / "updates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = tmp_path / "llm.html"
    assert main(["doctor", str(tmp_path), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "[kl_ref_blowup]" in out and "KL to the reference" in out and "diag_kl_ref_max" in out
    text = page.read_text()
    assert "id='panel-kl_ref'" in text and "id='panel-response_length'" in text
    kl_panel = text.split("id='panel-kl_ref'>")[1].split("</svg>")[0]
    assert 'data-rule="kl_ref_blowup"' in kl_panel
    assert "id='panel-value_loss'" not in text  # the classic rules that do not judge this run draw nothing
    assert text.split("id='ratio-data'>")[1].startswith("[]<")  # no ratio histograms: the view says so


# a rule is one definition -------------------------------------------------------------------------

TOY = Rule("toy_level_high", "toy level too high", "toy_level", "Lower the toy level.", "#123456",
           median_check("toy_level", "toy_max", above=True),
           thresholds={"toy_max": threshold(2.0, "Toy levels above 2 overflow the toy.", POSITIVE)},
           panels=(Panel("toy_level", "toy level (units)", lines=("toy_max",)),))


@pytest.fixture
def toy_rule():
    """TOY registered for one test."""
    RULES.register(TOY)
    yield TOY
    RULES.unregister(TOY.name)


def test_a_new_rule_is_one_definition(toy_rule, tmp_path, capsys):
    from proximo.cli import build_parser, config_overrides
    from proximo.config import PPOConfig, make_config
    from proximo.errors import ConfigError

    # its threshold is a config field, validated by its bound, set as diag_toy_max, and a flag
    assert PPOConfig().diag.toy_max == 2.0
    config = make_config(diag_toy_max=3.0)
    assert PPOConfig.from_dict(json.loads(config.to_json())).diag.toy_max == 3.0
    with pytest.raises(ConfigError, match="diag_toy_max must be a positive finite number"):
        make_config(diag_toy_max=0.0)
    args = build_parser().parse_args(["train", "X-v0", "--diag-toy-max", "4"])
    assert config_overrides(args) == {"diag_toy_max": 4.0}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "--diag-toy-max" in capsys.readouterr().out
    # the monitor judges it, and both reports show it with its threshold, reason, fix, panel, line and colour
    rows = [{"update": u, "global_step": 8 * u, "episode_return_mean": float(u), "toy_level": 1.0 if u < 20 else 5.0}
            for u in range(1, 41)]
    (tmp_path / "updates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "config.json").write_text(json.dumps({"env_id": "Toy-v0", **config.to_dict()}))
    page = tmp_path / "toy.html"
    assert main(["doctor", str(tmp_path), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "toy level too high [toy_level_high]" in out and "updates 22-40" in out, out  # median of 5 > 3 from 22
    assert "diag_toy_max=3: Toy levels above 2 overflow the toy." in out and "Lower the toy level." in out
    text = page.read_text()
    panel = text.split("id='panel-toy_level'>")[1].split("</svg>")[0]
    assert "toy level (units)" in panel and "diag_toy_max 3" in panel
    assert 'fill="#123456" fill-opacity="0.16" class="mark" data-rule="toy_level_high"' in panel  # its band
    assert "border-color:#123456' data-rule='toy_level_high'" in text and "fill='#123456'" in text  # finding, legend


def test_a_rule_that_could_not_be_drawn_is_refused_when_registered():
    with pytest.raises(TypeError):
        Rule("no_colour", "t", "toy_level", "Fix it.", check=TOY.check)  # a colour is part of the definition
    bad = [dataclasses.replace(TOY, color=""),
           dataclasses.replace(TOY, name="kl_spike"),
           dataclasses.replace(TOY, thresholds={"kl_max": TOY.thresholds["toy_max"]}),
           dataclasses.replace(TOY, panels=(Panel("toy_level", "toy", lines=("toy_maximum",)),)),
           dataclasses.replace(TOY, thresholds={"toy_max": dataclasses.field(default=2.0)})]
    for rule, problem in zip(bad, ["no colour", "registered already", "'kl_max' is a field already",
                                   "'toy_maximum' is no threshold field", "not made by threshold()"]):
        with pytest.raises(ValueError, match=problem):
            RULES.register(rule)
    assert "toy_level_high" not in RULES and not hasattr(DiagnosticsConfig(), "toy_max")


def test_panels_lines_and_colours_come_from_the_rules():
    drawn = {panel.metric: panel for panel in panels(list(RULES))}
    assert list(drawn) == ["approx_kl", "entropy", "value_loss", "explained_variance", "clip_fraction",
                           "advantage_std", "grad_norm", "score", "accuracy", "eval_sampled_accuracy",
                           "kl_ref_sequence", "kl_ref", "truncated_fraction", "response_length", "offpolicy/kl",
                           "zero_std_fraction"]
    assert drawn["entropy"].lines == ("token_entropy_min",)  # drawn on a language-model run's entropy panel
    assert drawn["clip_fraction"].lines == ("clip_low", "clip_high")  # two rules, one panel
    assert drawn["explained_variance"].limits == (-1.0, 1.0) and drawn["approx_kl"].log
    assert all(rule.color.startswith("#") for rule in RULES)


def test_the_page_is_built_from_the_package_templates(runs):
    broken, _ = runs
    files = {name: resources.files("proximo") / "templates" / name
             for name in ("doctor.html", "doctor.css", "doctor.js")}
    assert all(path.is_file() for path in files.values())
    page = html_report(examine(broken))
    assert files["doctor.css"].read_text() in page and files["doctor.js"].read_text() in page
    assert "$" not in page.split("<script>")[0]  # every placeholder of the skeleton filled
    # and they ship: pyproject's package-data covers every file of proximo/templates
    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["proximo"]
    shipped = [p.name for p in (root / "proximo" / "templates").iterdir()
               if any(fnmatch.fnmatch(f"templates/{p.name}", pattern) for pattern in patterns)]
    assert sorted(shipped) == sorted(p.name for p in (root / "proximo" / "templates").iterdir())


def test_doctor_reads_the_thresholds_of_old_and_plugin_run_configs(tmp_path):
    rows = [{"update": u, "approx_kl": 0.06, "entropy": 0.6} for u in range(1, 31)]
    (tmp_path / "updates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for config, fired in [({"diag_kl_max": 0.07}, []),  # written before the thresholds nested
                          ({"diag": {"kl_max": 0.07, "toy_max": 3.0}}, []),  # a plugin's rule, not registered here
                          ({"diag": {"kl_max": 0.07}, "diag_kl_max": 0.05}, ["kl_spike"])]:  # flat wins
        (tmp_path / "config.json").write_text(json.dumps(config))
        assert [e.rule for e in examine(tmp_path).episodes] == fired, config
    (tmp_path / "config.json").write_text(json.dumps({"diag": {"kl_max": -1}}))
    with pytest.raises(ProximoError, match=r"config.json: diag_kl_max must be a positive finite number"):
        examine(tmp_path)
