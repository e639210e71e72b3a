import pytest

from inference.runs import tiny_lora_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model):
    return tiny_lora_run(tmp_path_factory, tiny_model)


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model is faster on one thread, and far faster on a busy machine (no thread contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
