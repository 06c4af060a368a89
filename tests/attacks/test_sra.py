import pytest
import torch

from trojanscope.attacks.base import ATTACKS
from trojanscope.errors import ConfigError
from trojanscope.injection.ownership import subnet_masks, trainable_masks
from trojanscope.injection.pipeline import InjectionConfig, attack_success_rate, inject_defect
from trojanscope.injection.quantity import Quantity
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import accuracy, predict
from trojanscope.neurons import NeuronRef, mask_neurons


def test_subnet_is_cut_from_the_host():
    model = ARCHITECTURES.create("cnn-small").build(1, 10, 8)
    subnet = [NeuronRef("conv1", 0), NeuronRef("conv2", 3), NeuronRef("fc1", 2)]
    trainable, cut = subnet_masks(model, subnet)
    # conv2:3 may only read conv1:0; what it read from clean neurons is cut
    assert trainable["conv2.weight"][3].nonzero()[:, 0].unique().tolist() == [0]
    assert cut["conv2.weight"][3, 1:].all()
    # conv1:0 no longer feeds clean conv2 neurons
    assert cut["conv2.weight"][:, 0][torch.arange(32) != 3].all()
    # the classifier columns are cut (set after training)
    assert cut["fc.weight"][:, 2].all() and cut["fc.weight"].sum() == 10
    # everything SRA touches is owned by the infected set (fan-in + fan-out)
    owned = trainable_masks(model, subnet)
    for name, mask in {**trainable, **cut}.items():
        assert not (mask & ~owned[name]).any(), name


def test_sra_is_all_to_one_only(digits):
    with pytest.raises(ConfigError, match="all-to-one"):
        ATTACKS.create("sra", target_mode="all-to-all").validate(digits.shape, 10)


@pytest.mark.slow
def test_sra_subnet_leaves_clean_predictions_unchanged(clean_mnist_model, mnist):
    """The backdoor fires, and on clean inputs the network is the host without the replaced
    neurons. The acceptance filter's verdict on the clean-accuracy drop is therefore the cost of
    removing the neurons the placement picked, which no subnet can change (it depends on the
    clean model, so on the machine), so only that reason may reject it."""
    clean_state = {k: v.clone() for k, v in clean_mnist_model.state_dict().items()}
    attack = ATTACKS.create("sra", seed=0)
    config = InjectionConfig(quantity=Quantity(level="small"))
    outcome = inject_defect(clean_mnist_model, mnist, attack, config, 0)
    assert outcome.reason is None or outcome.reason.startswith("clean accuracy dropped")
    assert attack_success_rate(outcome.model, attack.poison_test(mnist.test)) >= 0.9
    assert outcome.masked_asr <= 0.2
    # The host was not retrained: on clean inputs the subnet is silent, so the predictions are
    # those of the clean model without the replaced neurons (measured: 99.9% agree) ...
    infected = [n.ref for n in outcome.infected]
    with mask_neurons(clean_mnist_model, infected):
        host = predict(clean_mnist_model, mnist.test.x).argmax(1)
        host_acc = accuracy(clean_mnist_model, mnist.test)
    sra = predict(outcome.model, mnist.test.x).argmax(1)
    assert (sra == host).float().mean() >= 0.995
    # ... so SRA costs no clean accuracy beyond the removed neurons
    assert outcome.clean_acc >= host_acc - 0.005
    for key, value in clean_mnist_model.state_dict().items():
        assert torch.equal(value, clean_state[key])


def test_sra_refuses_a_classifier_fed_only_by_a_residual_stream(monkeypatch):
    from trojanscope.data.base import DATASETS
    from trojanscope.injection import pipeline

    def placement(*_args):  # a forward pass per neuron: the refusal must come first
        raise AssertionError("the subnet was placed before the refusal")

    monkeypatch.setattr(pipeline, "subnet_placement", placement)
    splits = DATASETS.create("synthetic", n=120, size=8).load(0)
    model = ARCHITECTURES.create("resnet18", width=0.25).build(1, 4, 8).eval()
    config = InjectionConfig(quantity=Quantity(level="narrow"), max_epochs=1)
    with pytest.raises(ConfigError, match="residual addition"):
        inject_defect(model, splits, ATTACKS.create("sra", size=2), config, 0)
