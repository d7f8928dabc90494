"""The suite runs with the network blocked in-process (tests/conftest.py): check the guard is on and
works, and that the core loads a model folder through it (local files only, no hub call)."""
import socket

import pytest

from devtools import offline


def test_guard_is_on_for_the_whole_suite():
    assert offline.active()


def test_non_loopback_connections_and_lookups_fail_at_once():
    with socket.socket() as s, pytest.raises(offline.NetworkBlocked, match="connect to"):
        s.connect(("203.0.113.7", 443))                                      # TEST-NET-3
    with pytest.raises(offline.NetworkBlocked):
        socket.create_connection(("203.0.113.7", 443), timeout=5)
    with pytest.raises(offline.NetworkBlocked, match="name lookup of 'huggingface.co'"):
        socket.getaddrinfo("huggingface.co", 443)


def test_a_hub_call_is_caught():
    """What a forgotten local_files_only would do: huggingface_hub asks the hub, and the guard stops it."""
    import huggingface_hub
    with pytest.raises(Exception) as e:
        huggingface_hub.HfApi().model_info("Qwen/Qwen2-VL-7B-Instruct")
    chain, err = [], e.value
    while err is not None:
        chain.append(err)
        err = err.__cause__ or err.__context__
    assert any(isinstance(x, offline.NetworkBlocked) or "offline guard" in str(x) for x in chain), repr(e.value)


def test_loopback_still_works():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        with socket.create_connection(srv.getsockname(), timeout=5):
            conn, _ = srv.accept()
            conn.close()


def test_vlm_and_processor_load_through_the_guard(tiny_vlm_dir):
    from thinkdiff_core.vlm import VLMEncoder
    enc = VLMEncoder.from_pretrained(tiny_vlm_dir, dtype="fp32")
    assert enc.hidden_size == 64
