"""The three injection rules, the masked-gradient injector and the ground truth they produce."""
