"""The experiment store (`experiment.ExperimentStore`): every artifact of an experiment, its typed
records (`records`) and the candidate tables (`candidates`)."""
