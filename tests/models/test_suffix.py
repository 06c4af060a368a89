import copy
import subprocess
import sys

import pytest
import torch

from tests.subprocesses import subprocess_env
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.suffix import ChangedPart, SuffixRunner, patched_rerun
from trojanscope.neurons import (
    NeuronRef,
    eligible_layers,
    mask_neurons,
    patched_layers,
    patched_logits,
)


def _model_and_batch(arch):
    """A randomly initialised ``arch`` at width 0.25 for 8x8 images, and five of them."""
    torch.manual_seed(0)
    return ARCHITECTURES.create(arch, width=0.25).build(1, 4, 8).eval(), torch.rand(5, 1, 8, 8)


def _zero_channel(channel):
    def zero(out):
        out = out.clone()
        out[:, channel] = 0
        return out

    return zero


@pytest.mark.parametrize("arch", ["cnn-small", "resnet18"])
def test_rerun_matches_a_full_forward_with_the_same_change(arch):
    model, x = _model_and_batch(arch)
    runner = SuffixRunner(model, x)
    with torch.no_grad():
        assert torch.allclose(runner.logits, model(x))
    for layer in eligible_layers(model)[1::3]:
        unchanged = runner.rerun(layer.output, 2, lambda out: out)
        assert torch.allclose(unchanged, runner.logits.repeat(2, 1), atol=1e-5)

        with torch.no_grad(), mask_neurons(model, [NeuronRef(layer.name, 1)]):
            expected = model(x)
        rerun = runner.rerun(layer.output, 3, _zero_channel(1))
        assert torch.allclose(rerun, expected.repeat(3, 1), atol=1e-5)
        assert 0 < runner.fraction(layer.output) < 1


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2"])
def test_a_runner_for_one_module_keeps_less_and_reruns_the_same(arch):
    model, x = _model_and_batch(arch)
    full = SuffixRunner(model, x)
    layer = eligible_layers(model)[len(eligible_layers(model)) // 2]
    only = SuffixRunner(model, x, only=layer.output)
    assert torch.equal(only.logits, full.logits)
    assert len(only.cache) < len(full.cache) / 4

    assert torch.equal(
        only.rerun(layer.output, 2, _zero_channel(0)), full.rerun(layer.output, 2, _zero_channel(0))
    )
    with pytest.raises(ValueError, match="re-runs from"):
        only.rerun(eligible_layers(model)[0].output, 1, _zero_channel(0))


@pytest.mark.parametrize("arch", ["cnn-small", "resnet18", "mobilenetv2", "preact-resnet18"])
def test_a_changed_part_rerun_gives_the_trained_copys_own_logits(arch):
    """Upstream of the changed modules a trained copy is the clean model, so re-running the
    rest from values recorded on the clean model gives the copy's logits, bit for bit."""
    clean, x = _model_and_batch(arch)
    x = torch.rand(40, 1, 8, 8)
    layers = eligible_layers(clean)
    middle = [layers[len(layers) // 2].output, layers[-2].output]
    part = ChangedPart.record(clean, set(middle), x, budget=1 << 30, batch_size=16)
    assert part is not None
    trained = copy.deepcopy(clean)
    modules = dict(trained.named_modules())
    with torch.no_grad():
        for name in middle:
            modules[name].weight.mul_(-2.0)
        expected = trained(x)
    assert torch.equal(part.logits(trained), expected)
    with torch.no_grad():
        assert not torch.equal(expected, clean(x))


def test_a_changed_part_is_not_recorded_beyond_its_budget_or_for_an_unknown_module():
    clean, x = _model_and_batch("cnn-small")
    modules = {eligible_layers(clean)[1].output}
    assert ChangedPart.record(clean, modules, x, budget=16) is None
    assert ChangedPart.record(clean, {"no.such.module"}, x, budget=1 << 30) is None


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2"])
def test_a_patched_rerun_gives_the_patched_logits_of_whole_passes(arch):
    """From the first kept layer on, every other neuron is held at its paired clean value;
    upstream the triggered inputs pass unpatched. Re-running from the records of the changed
    and the patched modules gives what whole passes give, bit for bit (in residual networks a
    shortcut after the first kept layer is patched though training never changes it)."""
    clean, _ = _model_and_batch(arch)
    layers = eligible_layers(clean)
    keep = [NeuronRef(layers[len(layers) // 2].name, 0), NeuronRef(layers[-2].name, 1)]
    changed = {layers[len(layers) // 2].output, layers[-2].output}
    paired, triggered = torch.rand(40, 1, 8, 8), torch.rand(40, 1, 8, 8)
    held = changed | {layer.output for layer in patched_layers(clean, keep)}
    parts = [
        ChangedPart.record(clean, held, x, 1 << 30, batch_size=16) for x in (paired, triggered)
    ]
    assert parts[0] is not None and parts[1] is not None
    trained = copy.deepcopy(clean)
    modules = dict(trained.named_modules())
    with torch.no_grad():
        for name in changed:
            modules[name].weight.mul_(-2.0)
    expected = patched_logits(trained, keep, paired, triggered, batch_size=16)
    assert torch.equal(patched_rerun(trained, keep, parts[0], parts[1]), expected)
    assert not torch.equal(expected, patched_logits(clean, keep, paired, triggered, batch_size=16))


SPAWNED_AND_INTERRUPTED = """
import multiprocessing, os, sys
multiprocessing.set_start_method("spawn")  # as on macOS: tqdm's lock would be a named semaphore
import torch
from torch import nn
from trojanscope.models.suffix import SuffixRunner
model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).eval()
SuffixRunner(model, torch.ones(2, 1, 6, 6)).rerun("1", 2, lambda t: t * 0)
sys.stderr.flush()
os._exit(130)  # what the Ctrl-C path does
"""


def test_a_process_interrupted_after_a_suffix_rerun_leaves_no_semaphore_behind():
    """torch.fx's interpreter opens a tqdm bar; its lock must not be a tracked semaphore that an
    interrupted command leaves to the resource tracker's warning."""
    done = subprocess.run(
        [sys.executable, "-c", SPAWNED_AND_INTERRUPTED],
        env=subprocess_env(),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 130, done.stderr
    assert b"leaked" not in done.stderr, done.stderr
