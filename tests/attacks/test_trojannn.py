import torch

from trojanscope.attacks.base import ATTACKS
from trojanscope.injection.contribution import clean_contributions
from trojanscope.injection.pipeline import InjectionConfig, attack_success_rate, inject_defect
from trojanscope.injection.quantity import Quantity, select_infected
from trojanscope.neurons import eligible_layers, recording


def test_trigger_excites_the_chosen_neurons(clean_digits_model, digits):
    contrib = clean_contributions(clean_digits_model, digits.train.subset(torch.arange(256)))
    infected = select_infected(clean_digits_model, contrib, Quantity(level="small"), "least", 0)
    attack = ATTACKS.create("trojannn", seed=0)
    before = attack.apply(digits.test.x)
    attack.prepare(clean_digits_model, infected, digits.train)
    after = attack.apply(digits.test.x)
    t = attack.trigger(digits.shape)
    assert torch.all(t["pattern"][:, t["mask"][0] == 0] == 0)  # only inside the mask

    # the optimised objective: the chosen neurons' peak activation on triggered inputs
    def excitation(images):
        with recording(clean_digits_model, eligible_layers(clean_digits_model), reduce=False) as st:
            clean_digits_model(images)
        peaks = [st[r.layer][0][:, r.index].clamp_min(0) for r in infected]
        return torch.stack(
            [p.flatten(1).amax(1).mean() if p.dim() > 1 else p.mean() for p in peaks]
        )

    gain = excitation(after) - excitation(before)
    alive = gain != 0  # "least useful" neurons are often dead (never active): nothing excites them
    # Measured: 6 of the 7 live neurons gain (1 and 2 threads); a majority proves the optimisation.
    assert gain.mean() > 0 and (gain[alive] > 0).float().mean() > 0.5, gain
    # the clean model's parameters are untouched
    assert all(p.grad is None for p in clean_digits_model.parameters())


def test_trojannn_injects_an_accepted_small_defect(clean_digits_model, digits):
    """One seed here; benchmarks/attack_defaults.py runs seeds 0-4."""
    attack = ATTACKS.create("trojannn", seed=0)
    config = InjectionConfig(quantity=Quantity(level="small"))
    outcome = inject_defect(clean_digits_model, digits, attack, config, 0)
    assert outcome.status == "accepted", outcome.reason
    assert attack_success_rate(outcome.model, attack.poison_test(digits.test)) >= 0.9
