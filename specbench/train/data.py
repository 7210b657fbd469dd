"""Training data for drafters: ShareGPT conversations as token ids with a loss mask.

A conversation goes through the target's chat template; the mask marks the assistant tokens
(the tokens a drafter will be asked to predict at decode time). Conversations that the benchmark
holds out (`specbench.bench.sharegpt_is_heldout`) are never read. `self_distill` replaces every
assistant turn with the target's own greedy answer (Medusa-2, EAGLE), so drafters learn what the
target says rather than what ChatGPT said.

Token files (`TokenData.save`) are .npz: `tokens` (uint16 when the vocabulary fits, else int32),
`mask` (uint8), `offsets` (int64, one more than conversations) and `meta` (JSON text).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..bench.datasets import _sharegpt_conversations, sharegpt_is_heldout
from ..errors import SpecbenchError
from ..model import Transformer

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "assistant": "assistant",
         "system": "system"}


@dataclass
class TokenData:
    """Conversations as token ids with a loss mask, in one flat array."""
    tokens: np.ndarray          # [total]
    mask: np.ndarray            # [total] 1 = assistant token
    offsets: np.ndarray         # [conversations + 1]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def item(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return (torch.from_numpy(self.tokens[a:b].astype(np.int64)),
                torch.from_numpy(self.mask[a:b].astype(bool)))

    def assistant_counts(self, indices: list[int], vocab_size: int) -> torch.Tensor:
        """How often each token is an assistant token in conversations `indices` [vocab_size]: what
        a draft vocabulary is chosen by."""
        rows = np.zeros(len(self.tokens), dtype=bool)    # one bincount, not one per conversation
        for i in indices:
            rows[self.offsets[i]:self.offsets[i + 1]] = True
        chosen = self.tokens[rows & self.mask.astype(bool)].astype(np.int64)
        return torch.from_numpy(np.bincount(chosen, minlength=vocab_size)).long()

    def select(self, indices: list[int]) -> "TokenData":
        return TokenData.from_lists([self.item(i)[0].tolist() for i in indices],
                                    [self.item(i)[1].tolist() for i in indices], self.meta)

    @staticmethod
    def from_lists(tokens: list[list[int]], masks: list[list[bool]], meta: dict) -> "TokenData":
        lengths = np.array([0] + [len(t) for t in tokens], dtype=np.int64)
        vocab = int(meta.get("vocab_size", 1 << 31))
        flat = np.array([x for t in tokens for x in t], dtype=np.uint16 if vocab <= 65536 else np.int32)
        mask = np.array([int(m) for ms in masks for m in ms], dtype=np.uint8)
        return TokenData(flat, mask, np.cumsum(lengths), dict(meta))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, tokens=self.tokens, mask=self.mask, offsets=self.offsets,
                 meta=np.array(json.dumps(self.meta)))
        os.replace(tmp, path)     # never a half-written token file under the final name
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> "TokenData":
        path = Path(path)
        if not path.is_file():
            raise SpecbenchError(f"token file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as f:
                data = TokenData(f["tokens"], f["mask"], f["offsets"], json.loads(str(f["meta"])))
        except Exception as e:
            raise SpecbenchError(f"{path} is not a specbench token file (.npz with tokens, mask, offsets, meta): "
                                 f"{type(e).__name__}") from e
        o = data.offsets
        if (o.ndim != 1 or len(o) < 2 or o[0] != 0 or o[-1] != len(data.tokens) or len(data.mask) != len(data.tokens)
                or np.any(np.diff(o) < 0)):
            raise SpecbenchError(f"{path}: damaged token file (offsets do not match the token array)")
        return data

    def check_vocab(self, vocab_size: int, where: str) -> None:
        if len(self.tokens) and int(self.tokens.max()) >= vocab_size:
            raise SpecbenchError(f"{where}: token id {int(self.tokens.max())} is outside the model's vocabulary "
                                 f"of {vocab_size} (a token file made for another model?)")


def sharegpt_messages(conversation: dict) -> list[dict] | None:
    """ShareGPT turns as chat messages; None for a conversation that is not user/assistant
    alternation (unknown roles, empty turns)."""
    messages = []
    for turn in conversation.get("conversations") or []:
        role, text = ROLES.get(turn.get("from")), turn.get("value")
        if role is None or not isinstance(text, str) or not text.strip():
            return None
        messages.append({"role": role, "content": text})
    body = [m for m in messages if m["role"] != "system"]
    if not body or any(m["role"] != ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(body)):
        return None
    return messages if any(m["role"] == "assistant" for m in body) else None


def training_conversations(limit: int) -> list[tuple[str, list[dict]]]:
    """The first `limit` usable ShareGPT conversations in file order, never a held-out one."""
    out = []
    for conv in _sharegpt_conversations():
        cid = str(conv["id"])
        if sharegpt_is_heldout(cid):
            continue
        messages = sharegpt_messages(conv)
        if messages is not None:
            out.append((cid, messages))
            if len(out) == limit:
                break
    return out


def _template(tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def encode_chat(tokenizer, messages: list[dict], max_len: int) -> tuple[list[int], list[bool]]:
    """Token ids of a templated conversation, cut at max_len, and the mask of assistant tokens.

    Each assistant turn spans from the end of the templated history with its generation prompt to
    the end of the templated history including the turn (chat templates are prefix-stable)."""
    ids = _template(tokenizer, messages, False)[:max_len]
    mask = [False] * len(ids)
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_template(tokenizer, messages[:k], True))
        if start >= max_len:
            break
        end = min(len(_template(tokenizer, messages[:k + 1], False)), max_len)
        mask[start:end] = [True] * (end - start)
    return ids, mask


def sharegpt_tokens(model: Transformer, conversations: int, max_len: int) -> TokenData:
    """ShareGPT through the target's chat template (the `sharegpt` training data)."""
    if model.tokenizer is None:
        raise SpecbenchError("training on ShareGPT needs a model with a tokenizer (or pass a token file)")
    return chat_token_data(model, training_conversations(conversations), max_len, "sharegpt")


def chat_token_data(model: Transformer, chats: Iterable[tuple[str, list[dict]]], max_len: int,
                    source: str) -> TokenData:
    """(conversation id, messages) pairs through the target's chat template; a conversation with no
    assistant token within `max_len` is dropped."""
    tokens, masks, ids = [], [], []
    for cid, messages in chats:
        t, m = encode_chat(model.tokenizer, messages, max_len)
        if any(m):
            tokens.append(t)
            masks.append(m)
            ids.append(cid)
    meta = {"source": source, "conversations": len(tokens), "max_len": max_len,
            "vocab_size": model.args.vocab_size, "model": getattr(model, "name", None), "ids": ids}
    return TokenData.from_lists(tokens, masks, meta)


@torch.inference_mode()
def self_distill(model: Transformer, conversations: int, max_len: int, batch_size: int = 384,
                 max_answer: int = 512, max_turns: int = 1) -> TokenData:
    """The same conversations with every assistant turn regenerated by the target (greedy), turn by
    turn so later turns see the target's own earlier answers.

    Batched generation uses transformers' `generate` on the same checkpoint (`model.hf_source`):
    our core decodes one sequence at a time, and regeneration is throughput work, not decoding
    research. The answers are the target's greedy continuations either way.

    Only the first `max_turns` exchanges are kept: on an H200 a batch of 384 answers of the
    default model takes ~30 s however few of them are still running, and the later turns, which
    few conversations have, cost a whole batch each (measured: turns 3-7 of 3,000 conversations
    took over 4 minutes)."""
    from transformers import AutoModelForCausalLM
    if model.tokenizer is None or model.hf_source is None:
        raise SpecbenchError("self-distillation needs a model loaded from a checkpoint with a tokenizer")
    tok = model.tokenizer
    hf = AutoModelForCausalLM.from_pretrained(**model.hf_source, dtype=model.dtype).to(model.device).eval()
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    convs = training_conversations(conversations)
    users = [[m for m in msgs if m["role"] != "assistant"] for _, msgs in convs]
    chats: list[list[dict]] = [[] for _ in convs]
    turn = 0
    while turn < max_turns:
        live = [i for i, u in enumerate(users) if turn < len([m for m in u if m["role"] == "user"])]
        jobs = []
        for i in live:
            user_turns = [m for m in users[i] if m["role"] == "user"]
            system = [m for m in users[i] if m["role"] == "system"]
            chat = (system if turn == 0 else chats[i]) + [user_turns[turn]]
            prompt = _template(tok, chat, True)
            if len(prompt) < max_len - 16:
                jobs.append((i, chat, prompt))
        if not jobs:
            break
        jobs.sort(key=lambda j: len(j[2]))          # similar lengths per batch: less padding
        for b in tqdm(range(0, len(jobs), batch_size), desc=f"self-distill turn {turn + 1}", unit="batch"):
            batch = jobs[b:b + batch_size]
            width = max(len(p) for _, _, p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for _, _, p in batch], device=model.device)
            attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for _, _, p in batch], device=model.device)
            new = min(max_answer, max_len - min(len(p) for _, _, p in batch))
            out = hf.generate(input_ids=ids, attention_mask=attn, max_new_tokens=new, do_sample=False,
                              pad_token_id=pad)
            for (i, chat, _), row in zip(batch, out[:, width:].tolist()):
                if tok.eos_token_id in row:
                    row = row[:row.index(tok.eos_token_id)]
                chats[i] = chat + [{"role": "assistant", "content": tok.decode(row, skip_special_tokens=True)}]
        turn += 1
    answered = ((cid, chat) for (cid, _), chat in zip(convs, chats) if chat and chat[-1]["role"] == "assistant")
    return chat_token_data(model, answered, max_len, "self_distill")
