"""The papers' science: training, hypotheses g(t) and their ranking, classifier search, evaluation."""
