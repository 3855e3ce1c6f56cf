"""What a scheduled batch hands the runner: each sequence's chunk (`seq_chunk`: its tokens,
positions, block table and the media embeddings it covers), and before that the vision
encoding of the media those chunks reach (`encode_media`), done once and cached.
"""

from __future__ import annotations

from vlmserve.engine.mm_cache import CachedItem, MultiModalCache
from vlmserve.engine.scheduler import ScheduledBatch
from vlmserve.engine.sequence import Sequence
from vlmserve.runner.model_runner import MMSlice, ModelRunner, SeqChunk


def encode_media(batch: ScheduledBatch, runner: ModelRunner, cache: MultiModalCache) -> None:
    """Encode the vision inputs this batch's chunks reach and have no embeddings for yet
    (each once, however many sequences share it), and cache the embeddings; the pixels
    are dropped."""
    pending = []
    for seq, n in zip(batch.sequences, batch.num_tokens):
        start = seq.num_computed_tokens
        for item in seq.request.mm_items:
            if item.embeddings is None and item.overlaps(start, start + n) and item not in pending:
                pending.append(item)
    if not pending:
        return
    pixels = []
    for item in pending:
        # Items without embeddings always carry pixels: cache hits come with embeddings.
        assert item.pixel_values is not None
        pixels.append(item.pixel_values)
    embeddings = runner.encode(pixels, [item.grid_thw for item in pending])
    for item, emb in zip(pending, embeddings):
        item.embeddings = emb
        item.pixel_values = None
        cache.put(
            item.key,
            CachedItem(item.modality, item.grid_thw, emb, item.seconds_per_grid, item.digest),
        )


def seq_chunk(seq: Sequence, n: int) -> SeqChunk:
    """The next `n` tokens of `seq` as the runner takes them: ids, positions, where its
    KV blocks are, the slices of media embeddings they cover, whether it needs logits."""
    start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
    pieces = []
    for item in seq.request.mm_items:
        if item.overlaps(start, end):
            lo, hi = max(start, item.offset), min(end, item.offset + item.length)
            assert item.embeddings is not None
            pieces.append(MMSlice(item.embeddings, lo - item.offset, hi - item.offset, lo - start))
    return SeqChunk(
        token_ids=seq.token_ids[start:end],
        positions=seq.positions(start, end),
        start=start,
        block_table=seq.block_table,
        needs_logits=end == seq.num_tokens and seq.logits_from is None,
        mm=pieces,
        logits_from=seq.logits_from,
    )
