"""The LMM: an image/video encoder, a projector and any Hugging Face causal LM, composed.

Unlike LLaVA, which subclasses each LLM, :class:`LMM` holds three modules and does one thing
itself: it embeds the text, encodes the media, and writes the projected media features into the
embedding slots of the media placeholder tokens. The tokenizer side
(:mod:`mmalign.data.processor`) has already expanded each ``<image>`` (``<video>``) placeholder
into exactly ``encoder.num_tokens`` copies of the image (video) token, so the scatter is a
masked copy, and a count mismatch is an error rather than silent truncation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmalign.data.media import ImageProcessorConfig
from mmalign.models.codes import add_code, check_code, grid_codes
from mmalign.models.decoding import GenerationConfig, decode
from mmalign.models.temporal import TemporalMixer
from mmalign.models.video import VideoEncoder
from mmalign.models.vision import VisionConfig
from mmalign.utils import IGNORE_INDEX as IGNORE_INDEX  # re-exported; defined in mmalign.utils


@dataclass
class LMMConfig:
    """Everything needed, besides weights, to rebuild an :class:`LMM` and its input processing.

    Attributes:
        vision: image-encoder options.
        projector: ``"linear"`` or ``"mlpNx_gelu"``.
        projector_bias: linear layers of the projector carry a bias.
        image_token / video_token: placeholder strings in the text (also the tokens' spelling).
        image_token_id / video_token_id: their ids in the tokenizer (set when the model is built).
        video_frames: frames sampled per video (T).
        video_fps: sample at this rate from the start of the clip instead of uniformly over it
            (``None`` = uniform, as Video-LLaVA).
        video_pool: spatial pooling stride per frame (1 = none).
        video_temporal: ``"none"`` or ``"sinusoid"``: a fixed code of the frame index added to each
            frame's features (:mod:`mmalign.models.video`).
        image_spatial: ``"none"`` or ``"sinusoid"``: a fixed code of each patch's row and column
            added to its features, for images and video frames (:mod:`mmalign.models.codes`).
        video_mixer_layers: learned attention blocks over each clip's tokens, between the codes
            and the projector (:mod:`mmalign.models.temporal`; 0 = none). Saved as
            ``temporal.safetensors`` and trained with the projector.
        video_mixer_heads: attention heads of those blocks.
        image_processor: resize / pad / normalisation of pixels.
        video_vision: options of a separate video encoder (Video-LLaVA's ``video_tower``,
            :mod:`mmalign.models.video_llava`); ``None`` = frames go through the image encoder.
        template: conversation template name when the tokenizer has no ``chat_template``
            (``vicuna_v1``, ``llama3``, ``chatml``); ``None`` = the tokenizer's own template.
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: str = "mlp2x_gelu"
    projector_bias: bool = True
    image_token: str = "<image>"
    video_token: str = "<video>"
    image_token_id: int = -1
    video_token_id: int = -1
    video_frames: int = 8
    video_fps: float | None = None
    video_pool: int = 1
    video_temporal: str = "none"
    image_spatial: str = "none"
    video_mixer_layers: int = 0
    video_mixer_heads: int = 4
    image_processor: ImageProcessorConfig = field(default_factory=ImageProcessorConfig)
    video_vision: VisionConfig | None = None
    template: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.image_processor, dict):
            self.image_processor = ImageProcessorConfig(**self.image_processor)
        if isinstance(self.video_vision, dict):
            self.video_vision = VisionConfig(**self.video_vision)
        if self.video_frames < 1:
            raise ValueError(f"video_frames must be ≥ 1, got {self.video_frames}")
        if self.video_pool < 1:
            raise ValueError(f"video_pool must be ≥ 1, got {self.video_pool}")
        check_code("video_temporal", self.video_temporal)
        check_code("image_spatial", self.image_spatial)
        if self.video_mixer_layers < 0 or self.video_mixer_heads < 1:
            raise ValueError(
                f"need video_mixer_layers ≥ 0 and video_mixer_heads ≥ 1, got "
                f"{self.video_mixer_layers} and {self.video_mixer_heads}"
            )
        if self.image_token == self.video_token:
            raise ValueError("image_token and video_token must differ")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LMM(nn.Module):
    """Encoder + projector + causal LM.

    Args:
        vision: image encoder ``(B, 3, H, W) → (B, N, D_v)`` with ``num_tokens``/``hidden_size``.
        projector: ``(..., D_v) → (..., D)``.
        llm: any ``AutoModelForCausalLM`` (``get_input_embeddings``, ``forward(inputs_embeds=...)``,
            ``generate(inputs_embeds=...)``).
        cfg: token ids and media options; ``cfg.image_token_id`` must be set.
        video_vision: a separate encoder for video frames (same ``hidden_size`` as ``vision``: the
            projector is shared), as Video-LLaVA's ``video_tower``; needs ``cfg.video_vision``.
            ``None``: frames go through ``vision``.

    Raises:
        ValueError: unset image token id; ``video_vision`` and ``cfg.video_vision`` not both
            given, or a video encoder of another width.
    """

    def __init__(
        self,
        vision: nn.Module,
        projector: nn.Module,
        llm: nn.Module,
        cfg: LMMConfig,
        video_vision: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if cfg.image_token_id < 0:
            raise ValueError("LMMConfig.image_token_id is unset: build the model with a tokenizer")
        if (video_vision is None) != (cfg.video_vision is None):
            raise ValueError("a separate video encoder needs both the module and LMMConfig.video_vision")
        if video_vision is not None and video_vision.hidden_size != vision.hidden_size:
            raise ValueError(
                f"the video encoder's width {video_vision.hidden_size} differs from the image encoder's "
                f"{vision.hidden_size}: they share the projector"
            )
        self.vision = vision
        #: The separate video-frame encoder (Video-LLaVA's ``video_tower``), or ``None``.
        self.video_vision = video_vision
        self.projector = projector
        self.llm = llm
        self.cfg = cfg
        #: The learned temporal layer over clip tokens, or ``None`` (``cfg.video_mixer_layers``).
        self.temporal: TemporalMixer | None = None
        if cfg.video_mixer_layers:
            ref = next(projector.parameters())
            self.temporal = TemporalMixer(
                vision.hidden_size, cfg.video_mixer_layers, cfg.video_mixer_heads
            ).to(ref.device, ref.dtype)
        # Shares the image encoder's parameters (and the mixer): not a second tower.
        self._video = VideoEncoder(
            video_vision or vision, cfg.video_frames, cfg.video_pool, cfg.video_temporal, mixer=self.temporal
        )
        #: Run encoder + projector on a blank image when a batch has no media (ZeRO-3 needs every
        #: rank to run the same modules each step). Set by the training strategy.
        self.always_run_media = False

    def train(self, mode: bool = True) -> LMM:
        """Train mode everywhere except a frozen vision encoder, which stays in eval mode."""
        super().train(mode)
        if self.cfg.vision.frozen:
            self.vision.eval()
        if self.video_vision is not None and self.cfg.video_vision.frozen:
            self.video_vision.eval()
        return self

    # ----------------------------------------------------------------------------- media
    @property
    def image_tokens(self) -> int:
        """Feature tokens per image (N)."""
        return int(self.vision.num_tokens)

    @property
    def video_tokens(self) -> int:
        """Feature tokens per video (T · N')."""
        return int(self._video.num_tokens)

    def encode_pixels(self, pixels: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
        """Encoder features ``(n, N, D_v)`` of images or frames (by ``encoder``, default the image
        encoder), with the spatial code if configured."""
        encoder = encoder or self.vision
        feats = encoder(pixels)
        if self.cfg.image_spatial == "sinusoid":
            g = encoder.grid
            codes = grid_codes(g, feats.shape[-1])
            feats = torch.cat([feats[:, : -g * g], add_code(feats[:, -g * g :], codes)], dim=1)
        return feats

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(Ni, 3, H, W)`` → projected features ``(Ni, N, D)``."""
        return self.projector(self.encode_pixels(images))

    def video_features(self, videos: torch.Tensor) -> torch.Tensor:
        """``(Nv, T, 3, H, W)`` → encoder features ``(Nv, T · N', D_v)``: pooled, coded, mixed."""
        if videos.shape[1] != self.cfg.video_frames:
            raise ValueError(
                f"videos have {videos.shape[1]} frames, the model expects {self.cfg.video_frames}"
            )
        frames = self.encode_pixels(videos.flatten(0, 1), self._video.image_encoder)
        return self._video.pool_features(frames, videos.shape[0])

    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        """``(Nv, T, 3, H, W)`` → projected features ``(Nv, T · N', D)``."""
        return self.projector(self.video_features(videos))

    def add_temporal_mixer(self, layers: int, heads: int) -> TemporalMixer:
        """Give a model without one a fresh temporal mixer (identity until trained); sets the config."""
        if self.temporal is not None:
            raise ValueError("the model already has a temporal mixer")
        self.cfg.video_mixer_layers, self.cfg.video_mixer_heads = layers, heads
        ref = next(self.projector.parameters())
        self.temporal = TemporalMixer(self.vision.hidden_size, layers, heads).to(ref.device, ref.dtype)
        self._video.mixer = self.temporal
        return self.temporal

    def embed(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None = None,
        videos: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with media features written into their placeholder slots.

        Images and video frames go through the encoder in **one** call (two with a separate video
        encoder) and the projector in one call. With ``self.always_run_media`` (set by the training
        strategy; ZeRO-3 needs it) a batch without media still runs both on a blank image and adds
        its features times zero, so that
        every rank runs the same modules in the same order whatever its batch holds; the temporal
        mixer, if any, likewise runs on one blank token when the batch has no video, and a separate
        video encoder on one blank frame.

        Args:
            input_ids: ``(B, L)`` with each image expanded to N image-token ids.
            images: ``(Ni, 3, H, W)``, in order of appearance (row-major over the batch).
            videos: ``(Nv, T, 3, H, W)``, likewise.
            image_features: precomputed ``(Ni, N, D)`` projected features (skips the encoder);
                lets callers encode an image once and reuse it across sequences.

        Returns:
            ``(B, L, D)`` input embeddings for the LLM.
        """
        embeds = self.llm.get_input_embeddings()(input_ids)
        n_img = 0 if images is None or image_features is not None else images.shape[0]
        n_vid = 0 if videos is None else videos.shape[0]
        if n_vid and videos.shape[1] != self.cfg.video_frames:
            raise ValueError(
                f"videos have {videos.shape[1]} frames, the model expects {self.cfg.video_frames}"
            )
        split = self.video_vision is not None  # frames have their own encoder
        size = self.cfg.image_processor.size
        pixels = []
        if n_img:
            pixels.append(images)
        if n_vid and not split:
            pixels.append(videos.flatten(0, 1))
        dummy = not pixels and self.always_run_media
        if dummy:
            pixels.append(embeds.new_zeros((1, 3, size, size)))
        frame_feats = None  # (T·Nv, N, Dv) from the separate video encoder
        if split and (n_vid or self.always_run_media):
            frames = videos.flatten(0, 1) if n_vid else embeds.new_zeros((1, 3, size, size))
            frame_feats = self.encode_pixels(frames, self.video_vision)
        video_features = None
        if pixels or frame_feats is not None:
            feats = None
            if pixels:
                feats = self.encode_pixels(torch.cat(pixels) if len(pixels) > 1 else pixels[0])  # (n, N, Dv)
            parts = [feats[:n_img].flatten(0, 1)] if n_img else []
            n_blank = 0  # trailing projector inputs that only keep modules in the graph
            if n_vid:
                clip_feats = frame_feats if split else feats[n_img:]
                parts.append(self._video.pool_features(clip_feats, n_vid).flatten(0, 1))
            elif self.temporal is not None and self.always_run_media:
                # A blank token through the mixer and on into the projector, as on a rank with
                # videos: ZeRO-3 gathers parameters module by module, forward and backward, and
                # every rank must do so in the same order.
                idle = self.temporal(feats.new_zeros((1, 1, feats.shape[-1])))
                parts.append(idle.flatten(0, 1))
                n_blank += idle.shape[1]
            if dummy:
                parts.append(feats.flatten(0, 1))
                n_blank += feats.shape[0] * feats.shape[1]
            if split and not n_vid and frame_feats is not None:  # the blank frame
                parts.append(frame_feats.flatten(0, 1))
                n_blank += frame_feats.shape[0] * frame_feats.shape[1]
            flat = self.projector(torch.cat(parts) if len(parts) > 1 else parts[0])  # (Σ tokens, D)
            if n_blank:  # joins the graph, contributes nothing
                embeds = embeds + 0.0 * flat[-n_blank:].sum().to(embeds.dtype)
            width = flat.shape[-1]
            if n_img:
                image_features = flat[: n_img * self.image_tokens].view(n_img, self.image_tokens, width)
            if n_vid:
                video_features = flat[n_img * self.image_tokens :].view(n_vid, self.video_tokens, width)
        embeds = self._scatter(embeds, input_ids, self.cfg.image_token_id, image_features, "image")
        if self.cfg.video_token_id >= 0 or video_features is not None:
            embeds = self._scatter(embeds, input_ids, self.cfg.video_token_id, video_features, "video")
        return embeds

    @staticmethod
    def _scatter(
        embeds: torch.Tensor, input_ids: torch.Tensor, token_id: int, feats: torch.Tensor | None, kind: str
    ) -> torch.Tensor:
        mask = input_ids == token_id
        n_slots = int(mask.sum())
        n_feats = 0 if feats is None else feats.shape[0] * feats.shape[1]
        if n_slots != n_feats:
            per = "?" if feats is None or feats.shape[0] == 0 else feats.shape[1]
            n_items = 0 if feats is None else feats.shape[0]
            raise ValueError(
                f"{n_slots} {kind} placeholder slots in the batch but {n_items} {kind}(s) × {per} "
                f"feature tokens = {n_feats}: the text and the media do not match"
            )
        if n_slots == 0:
            return embeds
        feats = feats.reshape(-1, feats.shape[-1]).to(embeds.dtype)
        return embeds.masked_scatter(mask.unsqueeze(-1), feats)

    # ----------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        videos: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        loss_reduction: Literal["token", "example"] = "token",
        **llm_kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Run the LMM.

        Args:
            input_ids: ``(B, L)``.
            attention_mask: ``(B, L)`` 1 for real tokens; or a 4-D mask the LLM accepts.
            images / videos: see :meth:`embed`.
            labels: ``(B, L)`` targets, ``-100`` where no loss; not shifted (position t predicts
                label t+1 as in transformers).
            position_ids: ``(B, L)`` optional.
            loss_reduction: ``"token"`` averages over all target tokens of the batch (LLaVA);
                ``"example"`` averages each example's tokens first, then over examples, so short
                answers weigh as much as long captions.

        Returns:
            ``{"logits": (B, L, V)}`` plus ``"loss"`` when labels are given.
        """
        embeds = self.embed(input_ids, images, videos)
        out = self.llm(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, **llm_kwargs
        )
        result = {"logits": out.logits}
        if labels is not None:
            result["loss"] = causal_lm_loss(out.logits, labels, loss_reduction)
        return result

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        images: torch.Tensor | None = None,
        videos: torch.Tensor | None = None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        synced_gpus: bool = False,
    ) -> torch.Tensor:
        """Batched, KV-cached generation (greedy or sampling) by :func:`~mmalign.models.decoding.decode`.

        Args:
            input_ids: ``(B, L)`` **left-padded** prompts.
            attention_mask: ``(B, L)``.
            eos_token_id: stop id(s), kept as the last token of a response.
            synced_gpus: keep generating dummy steps until every rank is done (ZeRO-3).

        Returns:
            ``(B, L_new)`` new token ids only, padded with ``pad_token_id`` after the stop token.

        Raises:
            ValueError: right-padded prompts.
        """
        stops = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        cfg = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            stop_token_ids=tuple(stops),
            synced_gpus=synced_gpus,
        )
        return decode(self, input_ids, attention_mask, images, videos, cfg, pad_token_id).tokens


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: Literal["token", "example"] = "token"
) -> torch.Tensor:
    """Next-token cross-entropy.

    Args:
        logits: ``(B, L, V)``.
        labels: ``(B, L)`` with ``-100`` where no loss.
        reduction: ``"token"`` (mean over all target tokens) or ``"example"`` (mean per example,
            then mean over examples that have targets).

    Returns:
        Scalar loss (0 with no target tokens, still attached to the graph).
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    per_token = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    valid = (shift_labels != IGNORE_INDEX).float()
    if reduction == "token":
        return (per_token * valid).sum() / valid.sum().clamp(min=1.0)
    if reduction != "example":
        raise ValueError(f"unknown loss reduction {reduction!r}")
    counts = valid.sum(dim=1)
    per_example = (per_token * valid).sum(dim=1) / counts.clamp(min=1.0)
    has_targets = (counts > 0).float()
    return (per_example * has_targets).sum() / has_targets.sum().clamp(min=1.0)
