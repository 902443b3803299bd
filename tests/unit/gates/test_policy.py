"""Policy: the lesson's numbers as defaults, overrides by exact id before globs, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gates.policy import PolicyError, PolicySet, RolloutPolicy, load_policy, parse_policy


def test_defaults_are_the_rollout_lessons_numbers() -> None:
    p = RolloutPolicy()
    assert p.steps == [1, 10, 25, 50, 75, 100]  # 1% -> 10% -> 25% -> 50% -> 75% -> 100%
    g = p.gates
    assert g.latency.quantile == 0.99 and g.latency.max_ratio == 1.5  # P99 > 1.5x baseline
    assert g.cost.max_ratio == 1.2  # > 20% above baseline
    assert g.errors.max_ratio == 2.0  # 2x baseline
    assert g.feedback.max_ratio == 1.5  # 1.5x baseline
    assert all(x.enabled for x in (g.latency, g.cost, g.errors, g.output_length, g.feedback))


def test_no_file_and_empty_file_give_the_defaults() -> None:
    assert load_policy(None).defaults == RolloutPolicy()
    assert parse_policy("").defaults == RolloutPolicy()
    assert parse_policy("# only a comment\n").for_rollout("anything") == RolloutPolicy()


POLICY = """
defaults:
  min_samples: 300
  gates:
    cost: {max_ratio: 1.3}
overrides:
  - match: "chat-*"
    policy:
      gates: {cost: {max_ratio: 1.5}}
  - match: chat-v7
    policy:
      steps: [5, 50, 100]
      gates: {cost: {max_ratio: 1.1}}
  - match: "*-v7"
    policy:
      gates: {latency: {max_ratio: 3.0}}
"""


def test_exact_id_beats_a_glob_listed_before_it() -> None:
    ps = parse_policy(POLICY)
    p = ps.for_rollout("chat-v7")
    assert p.gates.cost.max_ratio == 1.1 and p.steps == [5, 50, 100]
    # the later glob '*-v7' also matches but the exact override wins alone: no merging of both
    assert p.gates.latency.max_ratio == 1.5


def test_first_matching_glob_wins_and_the_merge_is_deep() -> None:
    ps = parse_policy(POLICY)
    p = ps.for_rollout("chat-v8")
    assert p.gates.cost.max_ratio == 1.5
    # untouched fields of the same gate and of the defaults survive the deep merge
    assert p.gates.cost.enabled is True
    assert p.min_samples == 300 and p.steps == [1, 10, 25, 50, 75, 100]
    assert ps.for_rollout("search-v7").gates.latency.max_ratio == 3.0


def test_glob_matching_is_case_sensitive_and_unmatched_ids_get_the_defaults() -> None:
    ps = parse_policy(POLICY)
    assert ps.for_rollout("Chat-v8").gates.cost.max_ratio == 1.3
    assert ps.for_rollout("search") == ps.defaults


@pytest.mark.parametrize(
    "text,path",
    [
        ("defaults: {gates: {cost: {max_ratio: 0.9}}}", "defaults.gates.cost.max_ratio"),
        ("defaults: {gates: {latency: {quantile: 1.5}}}", "defaults.gates.latency.quantile"),
        ("defaults: {gates: {cost: {max_ration: 2}}}", "defaults.gates.cost.max_ration"),
        ("defaults: {min_samples: abc}", "defaults.min_samples"),
        ("defaults: {min_samples: 0}", "defaults.min_samples"),
        ("defaults: {steps: [1, 10, 5, 100]}", "defaults.steps"),
        ("defaults: {steps: [1, 50]}", "defaults.steps"),
        ("defaults: {steps: []}", "defaults.steps"),
        ("defaults: {steps: [0, 100]}", "defaults.steps"),
        ("defaults: {false_halt_budget: 0.7}", "defaults.false_halt_budget"),
        ("defaults: {cs_rho_promote_blocks: 0}", "defaults.cs_rho_promote_blocks"),
        ("defaults: {paired_blocks: maybe}", "defaults.paired_blocks"),
        ("defaults: {paired_blocks: 1}", "defaults.paired_blocks"),
        ("defaults: {gates: {feedback: {settle_seconds: -1}}}", "defaults.gates.feedback.settle_seconds"),
        ("defaults: {shadow: {min_samples: -1}}", "defaults.shadow.min_samples"),
        ("defaults: {prices: {m: {input_per_1k: -1}}}", "defaults.prices.m.input_per_1k"),
        ("overrides: [{match: x}]", "overrides.0.policy"),
        ("surprise: 1", "surprise"),
    ],
)
def test_invalid_values_give_a_policy_error_naming_the_field_path(text: str, path: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, "rollout.yaml")
    msg = str(exc.value)
    assert msg.startswith("rollout.yaml: ")
    assert path in msg


def test_cross_field_rules_name_the_section() -> None:
    with pytest.raises(PolicyError, match=r"defaults: .*max_step_seconds must be >= min_step_seconds"):
        parse_policy("defaults: {min_step_seconds: 100, max_step_seconds: 50}")
    with pytest.raises(PolicyError, match=r"defaults: .*eval_seconds must be <= block_seconds"):
        parse_policy("defaults: {eval_seconds: 100, block_seconds: 10}")


def test_an_invalid_override_is_caught_at_load_time_naming_the_override_and_field() -> None:
    text = 'overrides:\n  - match: "chat-*"\n    policy: {gates: {latency: {max_ratio: -1}}}\n'
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, "p.yaml")
    msg = str(exc.value)
    assert "overrides[0]" in msg and "chat-*" in msg and "gates.latency.max_ratio" in msg


def test_an_override_that_breaks_a_cross_field_rule_is_caught_at_load_time() -> None:
    with pytest.raises(PolicyError, match="overrides"):
        parse_policy("overrides: [{match: x, policy: {eval_seconds: 600}}]")


@pytest.mark.parametrize("text", ["defaults: [1", "defaults: {a: b", "\tdefaults: 1", "a: b: c"])
def test_invalid_yaml_is_a_policy_error_naming_the_source(text: str) -> None:
    with pytest.raises(PolicyError, match=r"^my\.yaml: not valid YAML"):
        parse_policy(text, "my.yaml")


@pytest.mark.parametrize("text", ["- 1\n- 2", "42", "just a string"])
def test_a_policy_that_is_not_a_mapping_is_rejected(text: str) -> None:
    with pytest.raises(PolicyError, match="mapping"):
        parse_policy(text)


def test_load_policy_on_a_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "policy.yaml"
    with pytest.raises(PolicyError) as exc:
        load_policy(missing)
    assert str(missing) in str(exc.value)


def test_load_policy_reads_a_file_and_errors_name_it(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(POLICY, encoding="utf-8")
    assert load_policy(good).for_rollout("chat-v7").gates.cost.max_ratio == 1.1
    assert load_policy(str(good)) == load_policy(good)
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: {gates: {errors: {max_ratio: 1}}}", encoding="utf-8")
    with pytest.raises(PolicyError) as exc:
        load_policy(bad)
    assert str(bad) in str(exc.value) and "defaults.gates.errors.max_ratio" in str(exc.value)


def test_policies_are_frozen_values() -> None:
    p = RolloutPolicy()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is an implementation detail
        p.min_samples = 1  # type: ignore[misc]
    assert PolicySet() == PolicySet()


def test_paired_blocks_is_off_by_default_and_read_from_the_file() -> None:
    assert RolloutPolicy().paired_blocks is False
    assert parse_policy("defaults: {paired_blocks: true}").defaults.paired_blocks is True
