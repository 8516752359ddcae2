"""The learner boundary: loss, gradient and optimizer step behind one interface; one file a backend."""
