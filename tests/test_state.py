import pytest

from sailplane.state import BackendStatus, InvalidTransition, check_transition


def test_forward_moves_and_jumps_are_allowed():
    check_transition(BackendStatus.SCHEDULED, BackendStatus.LOADING)
    check_transition(BackendStatus.LOADING, BackendStatus.TERMINATED)
    check_transition(BackendStatus.READY, BackendStatus.HARD_TERMINATING)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (BackendStatus.READY, BackendStatus.WAITING),
        (BackendStatus.READY, BackendStatus.READY),
        (BackendStatus.TERMINATED, BackendStatus.SCHEDULED),
    ],
)
def test_backward_or_repeated_moves_name_both_states(current, new):
    with pytest.raises(InvalidTransition) as info:
        check_transition(current, new)
    assert repr(current.value) in info.value.message
    assert repr(new.value) in info.value.message


def test_only_states_before_terminating_are_alive():
    alive = [status for status in BackendStatus if status.is_alive]
    assert alive[-1] is BackendStatus.READY
    assert not BackendStatus.TERMINATING.is_alive
