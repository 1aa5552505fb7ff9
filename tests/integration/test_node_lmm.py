"""The node with a CLIP encoder, a LLaVA-3D language model and a LLaVA-1.5-family view
model, all tiny random models written to disk in their real formats and loaded through
the real loaders: open questions stream from the LMM, questions about the current view
from the view model with the latest keyframe image, cancel stops generation, a second
goal is rejected while the query limit is reached, and a mismatched model is refused at
configure."""

from __future__ import annotations

from pathlib import Path

import pytest
from action_msgs.msg import GoalStatus
from llava3d_interfaces.action import Ask, Describe

from tests.integration.test_node import NodeUnderTest, _feed
from tests.model_fixtures import make_tiny_clip, make_tiny_lmm, make_tiny_view_lmm
from tests.rgbd_player import middlebury_frame
from tests.ros_harness import wait_future, wait_until


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return make_tiny_clip(root / "clip"), make_tiny_lmm(root / "llava3d")


def _node(client_side, start_process, tmp_path, tiny_models, **kw):  # type: ignore[no-untyped-def]
    clip, lmm = tiny_models
    return NodeUnderTest(
        client_side,
        start_process,
        tmp_path,
        **{
            "encoder.backend": "hf_clip",
            "encoder.model": str(clip),
            "lmm.checkpoint": str(lmm),
            "query.max_concurrent": 1,
            **kw,
        },
    )


def test_open_question_streams_cancels_and_rejects_when_busy(
    client_side, start_process, tmp_path, tiny_models
) -> None:  # type: ignore[no-untyped-def]
    n = _node(client_side, start_process, tmp_path, tiny_models)
    _feed(n, middlebury_frame(), 2)
    wait_until(lambda: n.latest().keyframes_integrated >= 2, 60.0, "keyframes")

    # A short answer runs to completion and streams its text as it goes.
    partial: list[str] = []

    def on_feedback(m) -> None:  # type: ignore[no-untyped-def]
        partial.append(m.feedback.partial_answer)

    goal = Ask.Goal(question="What is in front of me?", max_new_tokens=12)
    handle = wait_future(n.ask.send_goal_async(goal, feedback_callback=on_feedback), 10.0, "ok")
    done = wait_future(handle.get_result_async(), 60.0, "answer")
    r = done.result
    assert r.error_code == Ask.Result.NONE, r.error_msg
    assert r.answered_by == Ask.Result.ANSWERED_BY_LMM and r.generated_tokens == 12
    # The stream ends in the final answer. Feedback (a topic) and the result (a service)
    # race to the client, so the last feedback may land just after the result: wait for it.
    wait_until(lambda: bool(partial) and partial[-1] == r.answer, 10.0, "the last feedback")
    assert len([p for p in partial if p]) > 1  # it streamed, not one message at the end

    # A long answer: once it is streaming, a second goal is rejected (limit 1), and a
    # cancel stops generation long before its 10,000 tokens.
    partial.clear()
    long_goal = Ask.Goal(question="Describe everything.", max_new_tokens=10_000)
    handle = wait_future(
        n.ask.send_goal_async(long_goal, feedback_callback=on_feedback), 10.0, "accept long"
    )
    assert handle.accepted
    wait_until(lambda: any(partial), 30.0, "streamed tokens")
    second = wait_future(n.ask.send_goal_async(Ask.Goal(question="Hi?")), 10.0, "second")
    assert not second.accepted
    wait_future(handle.cancel_goal_async(), 10.0, "cancel")
    done = wait_future(handle.get_result_async(), 30.0, "cancelled result")
    assert done.status == GoalStatus.STATUS_CANCELED
    assert done.result.error_code == Ask.Result.CANCELED
    assert 0 < done.result.generated_tokens < 10_000
    # The slot is free again.
    ok = n.send(n.ask, Ask.Goal(question="And now?", max_new_tokens=3))
    assert ok.result.error_code == Ask.Result.NONE and ok.result.generated_tokens == 3

    # Describe uses the click prompt on the language model.
    d = Describe.Goal(max_new_tokens=5)
    d.header.frame_id = "map"
    d.center.position.x, d.center.position.z = 3.0, 1.0
    r = n.send(n.describe, d).result
    assert r.error_code == Describe.Result.NONE and r.answered_by == Describe.Result.ANSWERED_BY_LMM
    assert r.caption


def test_language_model_must_match_the_encoder(
    client_side, start_process, tmp_path, tiny_models
) -> None:  # type: ignore[no-untyped-def]
    _, lmm = tiny_models
    # The default DINOv2 encoder gives 384-d features; the tiny LMM expects 32-d.
    params = {"lmm.checkpoint": str(lmm)}
    from tests.integration.test_node import write_params

    path = write_params(tmp_path, **params)
    proc = start_process(["-m", "llava3d_ros.cli", "up", "--params", str(path)], name="bad")
    wait_until(lambda: "configure failed" in proc.log_text(), 60.0, "configure failure")
    assert "expects 32-d scene features" in proc.log_text()


@pytest.fixture(scope="module")
def view_model(tiny_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    clip, _ = tiny_models
    return make_tiny_view_lmm(tmp_path_factory.mktemp("view") / "spatial-llava", clip)


def test_view_questions_go_to_the_2d_model_with_the_latest_keyframe(
    client_side, start_process, tmp_path, tiny_models, view_model
) -> None:  # type: ignore[no-untyped-def]

    _, lmm = tiny_models
    n = _node(
        client_side, start_process, tmp_path, tiny_models, **{"view.checkpoint": str(view_model)}
    )
    _feed(n, middlebury_frame(), 3)
    wait_until(lambda: n.latest().keyframes_integrated >= 3, 60.0, "keyframes")
    assert "vision tower: shared with the memory" in n.proc.log_text()

    stages: list[str] = []
    partial: list[str] = []

    def on_feedback(m) -> None:  # type: ignore[no-untyped-def]
        stages.append(m.feedback.stage)
        partial.append(m.feedback.partial_answer)

    # auto: a question about what is in front of the robot goes to the view model.
    goal = Ask.Goal(question="What is in front of me?", max_new_tokens=6)
    handle = wait_future(n.ask.send_goal_async(goal, feedback_callback=on_feedback), 10.0, "ok")
    r = wait_future(handle.get_result_async(), 60.0, "view answer").result
    assert r.error_code == Ask.Result.NONE, r.error_msg
    assert r.answered_by == Ask.Result.ANSWERED_BY_VIEW and r.generated_tokens == 6
    assert r.model == str(view_model)
    # The latest keyframe answered: _feed stamps frame i at (10 + i) s.
    assert (r.view_stamp.sec, r.view_stamp.nanosec) == (12, 0)
    wait_until(lambda: bool(partial) and partial[-1] == r.answer, 10.0, "the last feedback")
    assert stages[0] == "encoding_view" and "generating" in stages

    # The same question in mode lmm goes to the 3D model; its result names no view.
    r = n.send(n.ask, Ask.Goal(question="What is in front of me?", mode="lmm", max_new_tokens=4))
    r = r.result
    assert r.answered_by == Ask.Result.ANSWERED_BY_LMM and r.model == str(lmm)
    assert (r.view_stamp.sec, r.view_stamp.nanosec) == (0, 0)
    # A scene question in auto mode stays with the 3D model.
    r = n.send(n.ask, Ask.Goal(question="Describe the room.", max_new_tokens=3)).result
    assert r.answered_by == Ask.Result.ANSWERED_BY_LMM

    # mode view, a long answer: cancel stops it between tokens.
    partial.clear()
    long_goal = Ask.Goal(question="Describe everything.", mode="view", max_new_tokens=10_000)
    handle = wait_future(
        n.ask.send_goal_async(long_goal, feedback_callback=on_feedback), 10.0, "accept"
    )
    wait_until(lambda: any(partial), 30.0, "streamed tokens")
    wait_future(handle.cancel_goal_async(), 10.0, "cancel")
    done = wait_future(handle.get_result_async(), 30.0, "cancelled result")
    assert done.status == GoalStatus.STATUS_CANCELED
    assert done.result.error_code == Ask.Result.CANCELED
    assert 0 < done.result.generated_tokens < 10_000
    assert done.result.answered_by == Ask.Result.ANSWERED_BY_VIEW

    r = n.send(n.ask, Ask.Goal(question="What is this?", mode="sideways")).result
    assert r.error_code == Ask.Result.BAD_QUERY and "view" in r.error_msg

    # The planner API reports which model and which keyframe answered.
    from llava3d_ros.client import Llava3DClient

    with Llava3DClient() as client:
        assert client.wait_for_server(30.0)
        a = client.ask("What do you see?", max_new_tokens=2)
        assert a.ok and a.answered_by == "view" and a.model == str(view_model)
        assert a.view_stamp_ns == 12_000_000_000


def test_a_3d_checkpoint_is_refused_as_the_view_model(
    client_side, start_process, tmp_path, tiny_models
) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.test_node import write_params

    clip, lmm = tiny_models
    params = {
        "encoder.backend": "hf_clip",
        "encoder.model": str(clip),
        "view.checkpoint": str(lmm),
    }
    path = write_params(tmp_path, **params)
    proc = start_process(["-m", "llava3d_ros.cli", "up", "--params", str(path)], name="bad_view")
    wait_until(lambda: "configure failed" in proc.log_text(), 60.0, "configure failure")
    assert "is a LLaVA-3D" in proc.log_text() and "lmm.checkpoint" in proc.log_text()
