"""What a person looks at after a run: sampled episodes with their credit (samples.py), and `vineppo report`'s
one-file HTML page with the training curves (page.py)."""
