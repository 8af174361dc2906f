"""minigpt: the model and everything in the book that is not a batching idea."""
from .config import PRESETS, ModelConfig, get_config
from .engine import Completion, Completions, Request, Sampler, fail, finish_reason, max_total_len, start_requests
from .loading import from_config, load_pretrained, load_tokenizer, stream_text
from .metrics import Clock, RunResult, load_results, results_table, save_results, token_progress
from .model import Transformer, zeros_kv_cache
from .workloads import WORKLOADS, Workload, get_workload

__all__ = [
    "PRESETS", "ModelConfig", "get_config", "Completion", "Completions", "Request", "Sampler", "finish_reason",
    "max_total_len", "start_requests", "fail", "from_config", "load_pretrained", "load_tokenizer", "stream_text", "Clock",
    "RunResult", "load_results", "results_table", "save_results", "token_progress", "Transformer", "zeros_kv_cache",
    "WORKLOADS", "Workload", "get_workload",
]
