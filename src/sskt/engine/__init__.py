"""Training loop (Lightning), checkpoints and the fit/evaluate/export API."""
from sskt.engine.run import RunResult, evaluate, evaluate_model, export, fit, load_trained

__all__ = ["RunResult", "evaluate", "evaluate_model", "export", "fit", "load_trained"]
