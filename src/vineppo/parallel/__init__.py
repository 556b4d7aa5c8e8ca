"""Training over several processes: one backend object, chosen once per run (backend.py), over the process group
(distributed.py), FSDP2 (fsdp.py), DeepSpeed ZeRO (zero.py) and the optimizer step of each (stepping.py)."""
