"""The diffusion tests use small tensors: one intra-op thread is as fast on an idle machine and
avoids OpenMP oversubscription (10-50x slowdowns) when the machine is shared."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
