"""What `mt train` trains with: the Trainer and its step loop, the state kept between steps,
validation, stop requests, the run's checkpoint files, the objects a run is built from, the
timed fallback to a smaller model, and the end-of-run choice of the final checkpoint. The stage
itself (`mt train`) is `mt.train`."""
