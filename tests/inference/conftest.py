import pytest

from inference.runs import tiny_lora_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model):
    return tiny_lora_run(tmp_path_factory, tiny_model)
