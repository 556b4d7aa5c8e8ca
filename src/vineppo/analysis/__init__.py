"""The paper's analyses of a trained run.

values.py   `vineppo analyze values`: value-prediction error and step-ranking accuracy of VinePPO's MC estimate
            and of PPO's value network against many-rollout ground truth
states.py   held-out states, their rollout values and value-network predictions, alternative next steps
stats.py    the figures: mean with standard error, step-ranking accuracy, the MC estimate's sampling error
plots.py    the PNGs
"""
