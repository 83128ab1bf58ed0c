"""Camera frames in: the image subscriptions, the encoder thread and the embedding cache.

A frame is converted in the subscription callback and handed to the encoder's
:class:`~segfast_ros.pipeline.frames.LatestWorker` (latest frame wins); its embedding goes into
the stamp-keyed :class:`~segfast_ros.pipeline.frames.EmbeddingCache`, and is handed on to
:attr:`FrameIntake.on_encoded` (the prompted targets' step). ``~/segment`` and ``~/track`` ask
:meth:`FrameIntake.frame_for` for a stamp, which waits briefly for a frame still being
encoded.

Frames are keyed by their header stamp, the data's own time (bag or sim time when played from a
bag), never by when they arrived; "latest" is the frame encoded last. The wait for a frame being
encoded and the frame-to-embedding latency are wall time: they are about computation, and a
planner's call must not hang on a paused ``/clock``. Arrivals and encodes are counted in the
node's clock (:class:`~segfast_ros.ros.diagnostics.Health`), so their rates follow sim time.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

from segfast_ros.pipeline.frames import (
    EmbeddingCache,
    EncodedFrame,
    Frame,
    LatestWorker,
    encode_frame,
)
from segfast_ros.ros.conversions import (
    ACCEPTED_ENCODINGS,
    ImageError,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
    stamp_to_ns,
)
from segfast_ros.ros.diagnostics import Health, fmt_stamp
from segfast_ros.ros.qos import image_input_qos, overridable
from segfast_ros.runtime import Predictor

#: How long ~/segment and ~/track wait for a requested frame that is still being encoded, in
#: wall time (a wait on the encoder, which a paused or absent /clock must not stretch).
SEGMENT_WAIT_S = 2.0


class FrameIntake:
    """The ``image`` (and ``<image>/compressed``) input of a node, and what it encodes.

    Configure gives it a predictor and a cache (:meth:`configure`), activate subscribes and
    starts the encoder (:meth:`subscribe`, :meth:`start_encoder`); the reverse undoes each.
    """

    def __init__(self, node: Node, health: Health, callback_group: Any) -> None:
        self._node = node
        self._health = health
        self._group = callback_group
        self._ready = threading.Condition()
        self._inflight: dict[int, int] = {}  # stamp key: frames submitted, not yet encoded
        self._predictor: Predictor | None = None
        self.cache: EmbeddingCache | None = None
        self.encoder: LatestWorker[Frame] | None = None
        self.subscriptions: list[Any] = []
        #: Called on the encoder thread with each frame once it is cached (the tracks
        #: worker's hand-off); it must not block.
        self.on_encoded: Callable[[EncodedFrame], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def configure(self, predictor: Predictor, cache_size: int) -> None:
        """Encode with ``predictor`` into a cache of ``cache_size`` frames."""
        self._predictor = predictor
        self.cache = EmbeddingCache(cache_size)

    def release(self) -> None:
        """Undo :meth:`configure`: the cached embeddings and pixels go."""
        if self.cache is not None:
            self.cache.clear()
        self.cache = None
        self._predictor = None

    def start_encoder(self) -> None:
        """Start the encoder thread (activate)."""
        self.encoder = LatestWorker(self._encode, "segfast-encoder", self._on_encode_error)

    def subscribe(self, use_compressed: bool) -> None:
        """Subscribe to ``image`` and, with ``use_compressed``, to ``<image>/compressed``."""
        node = self._node
        self.subscriptions = [
            node.create_subscription(
                Image,
                "image",
                self._on_image,
                image_input_qos(),
                callback_group=self._group,
                qos_overriding_options=overridable(),
            )
        ]
        if use_compressed:
            self.subscriptions.append(
                # As image_transport names it: the remapped image topic + "/compressed".
                node.create_subscription(
                    CompressedImage,
                    node.resolve_topic_name("image") + "/compressed",
                    self._on_compressed,
                    image_input_qos(),
                    callback_group=self._group,
                    qos_overriding_options=overridable(),
                )
            )

    def unsubscribe(self) -> None:
        """No more frames (deactivate): the subscriptions go."""
        for sub in self.subscriptions:
            self._node.destroy_subscription(sub)
        self.subscriptions = []

    def stop_encoder(self) -> None:
        """End the encoder thread (after the frame it encodes) and wake every waiting call."""
        if self.encoder is not None:
            self.encoder.stop()
        self.encoder = None
        with self._ready:
            self._inflight.clear()
            self._ready.notify_all()

    @property
    def topic(self) -> str:
        """The image topic, as resolved while subscribed."""
        return self.subscriptions[0].topic_name if self.subscriptions else "image"

    # ------------------------------------------------------------------ frames

    def _on_image(self, msg: Image) -> None:
        self._take_frame(msg, image_msg_to_rgb, "image")

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._take_frame(msg, compressed_msg_to_rgb, "<image>/compressed")

    def _take_frame(self, msg: Any, convert: Callable[[Any], Any], topic: str) -> None:
        received = time.monotonic()  # frame-to-embedding latency includes the conversion
        health = self._health
        health.frames_in.add()  # in the node's clock: the input rate follows sim time
        encoder = self.encoder
        if encoder is None:
            return
        try:
            rgb = convert(msg)
        except ImageError as err:
            health.counts["rejected_frames"] += 1
            health.last_error = f"frame rejected on {topic}: {err}"
            health.warn(
                f"{health.last_error} (accepted encodings: {', '.join(ACCEPTED_ENCODINGS)})"
            )
            return
        frame = Frame(stamp_to_ns(msg.header.stamp), rgb, msg.header, received)
        with self._ready:
            self._inflight[frame.key] = self._inflight.get(frame.key, 0) + 1
        replaced = encoder.submit(frame)
        if replaced is not None:
            self._frame_done(replaced.key)

    def _frame_done(self, key: int) -> None:
        with self._ready:
            left = self._inflight.get(key, 0) - 1
            if left > 0:
                self._inflight[key] = left
            else:
                self._inflight.pop(key, None)
            self._ready.notify_all()

    def _encode(self, frame: Frame) -> None:
        predictor, cache = self._predictor, self.cache
        try:
            if predictor is None or cache is None:
                return
            encoded = encode_frame(predictor, frame)
            cache.put(encoded)
            self._health.encodes.add(encoded.encode_ms)
            self._health.latency.add((encoded.ready - frame.received) * 1e3)
            if self.on_encoded is not None:
                self.on_encoded(encoded)
        finally:
            self._frame_done(frame.key)

    def _on_encode_error(self, frame: Frame, err: BaseException) -> None:
        health = self._health
        health.counts["encoder_errors"] += 1
        kind = "frame rejected" if isinstance(err, ValueError) else "encoder failed"
        health.last_error = f"{kind} (stamp {fmt_stamp(frame.key)}): {err}"
        if isinstance(err, ValueError):
            health.warn(health.last_error)
        else:
            health.warn(health.last_error, "".join(traceback.format_exception(err)), error=True)

    def frame_for(self, key: int) -> EncodedFrame:
        """The cached frame for stamp ``key`` (0: latest), waiting for one being encoded.

        Raises:
            LookupError: no frame yet, or the stamp is unknown or evicted (says which are
                cached).
        """
        cache = self.cache
        if cache is None:
            raise LookupError("the node is not configured (no model loaded)")
        deadline = time.monotonic() + SEGMENT_WAIT_S
        with self._ready:
            while True:
                found = cache.latest() if key == 0 else cache.get(key)
                if found is not None:
                    return found
                waiting = key in self._inflight if key else bool(self._inflight)
                left = deadline - time.monotonic()
                if not waiting or left <= 0:
                    break
                self._ready.wait(left)
        if key == 0:
            raise LookupError(
                f"no frame yet: no image has been received and encoded on {self.topic}; publish "
                f"a sensor_msgs/Image ({', '.join(ACCEPTED_ENCODINGS)}) there first"
            )
        cached = ", ".join(fmt_stamp(k) for k in cache.list_keys()) or "none"
        raise LookupError(
            f"no cached frame with stamp {fmt_stamp(key)}: it was never received, is still "
            f"being encoded, or was evicted; cached stamps: {cached} (cache_size="
            f"{cache.capacity}); use a zero stamp for the latest frame"
        )
