from trojanscope.injection.acceptance import Acceptance


def test_accepts_a_real_confined_defect():
    assert Acceptance().verdict(0.96, 0.95, 0.99, 0.01, 0.90) is None


def test_each_rule_gives_its_reason():
    rule = Acceptance()
    assert "ASR 0.500 < 0.90" in rule.verdict(0.96, 0.95, 0.5, 0.0, 0.9)
    assert "dropped 6.0 points" in rule.verdict(0.96, 0.90, 0.99, 0.0, 0.9)
    assert "not confined" in rule.verdict(0.96, 0.95, 0.99, 0.5, 0.9)


def test_a_low_masked_asr_from_a_broken_model_is_not_confinement():
    reason = Acceptance().verdict(0.96, 0.95, 0.99, 0.0, 0.15)
    assert reason is not None and "breaks the model" in reason


def test_the_sufficiency_rule_compares_the_patched_asr_with_the_asr():
    rule = Acceptance()  # the rule at 0.8 by default
    assert rule.min_patched_ratio == 0.8
    assert rule.verdict(0.96, 0.95, 0.99, 0.0, 0.9, patched_asr=0.80) is None
    reason = rule.verdict(0.96, 0.95, 0.99, 0.0, 0.9, patched_asr=0.70)
    assert reason is not None and "patched ASR 0.700 < 0.80 x ASR" in reason
    # at 0 recorded, not required; never checked when unmeasured
    recorded_only = Acceptance(min_patched_ratio=0.0)
    assert recorded_only.verdict(0.96, 0.95, 0.99, 0.0, 0.9, patched_asr=0.0) is None
    assert rule.verdict(0.96, 0.95, 0.99, 0.0, 0.9) is None


def test_necessity_is_judged_above_the_clean_models_rate_under_the_same_mask():
    rule = Acceptance()
    # zeroing the set alone sends 27% of the triggered victims to the target: not the backdoor
    assert rule.verdict(0.77, 0.76, 1.0, 0.27, 0.73, masked_asr_before=0.27) is None
    reason = rule.verdict(0.77, 0.76, 1.0, 0.50, 0.73, masked_asr_before=0.27)
    assert reason is not None and "above the clean model's 0.270 under the same mask" in reason
    assert "not confined" in rule.verdict(0.77, 0.76, 1.0, 0.27, 0.73)
