"""Chat data (``messages``: a list of ``{role, content}`` turns) as a decoder is trained and served.

A conversation becomes *segments*: the pieces of its text in order, each marked whether the loss
falls on it. Rendered with the tokenizer's chat template (``tokenizer.apply_chat_template``: the
format an instruct model is served in), the trained pieces are the assistant turns as the template
writes them (their text and the template's end-of-turn marks, so the model learns to stop); everything
else (system and user turns, the template's role headers) is context. Without a template a plain
rendering is used (``role: content`` lines).

Where the assistant turns are is found by rendering: for the i-th message, if an assistant's, the
template applied to the turns before it with the generation prompt is the prefix, and applied to the
turns up to it is the prefix plus that turn. A template that rewrites earlier turns (some drop past
reasoning) breaks that; then only the last assistant turn is trained, and the log says so.

``encode_segments`` gives token ids and labels: the text tokenised whole (so its tokens are those of
serving), each token labelled where its first character lies in a trained piece, -100 elsewhere.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from peftlab.errors import DataError

log = logging.getLogger(__name__)

Segments = tuple[tuple[str, bool], ...]  # (text, trained) pieces of one conversation, in order
ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages, where: str) -> tuple[dict, ...]:
    """``messages`` as ``({"role", "content"}, ...)``, ending with an assistant turn; DataError naming
    ``where`` otherwise."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}} turns, got {messages!r:.80}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: turn {i}: expected {{role: ..., content: ...}} with string values, "
                            f"got {m!r:.80}")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: turn {i}: role {m['role']!r} is not one of {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last turn is {out[-1]['role']!r}; a conversation to learn from ends with "
                        f"the assistant's")
    return tuple(out)


def plain_prompt(messages: Sequence[dict]) -> str:
    """The conversation before its last turn, plainly: ``role: content`` lines, then ``assistant:``."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages[:-1]) + "assistant:"


def plain_segments(messages: Sequence[dict]) -> Segments:
    """The plain rendering's pieces: each assistant turn's `` content`` and newline trained."""
    out, context = [], ""
    for m in messages:
        if m["role"] == "assistant":
            out += [(context + "assistant:", False), (f" {m['content']}\n", True)]
            context = ""
        else:
            context += f"{m['role']}: {m['content']}\n"
    return tuple(out)


def template_segments(tokenizer, messages: Sequence[dict], template: Optional[str] = None) -> Segments:
    """The pieces of ``messages`` rendered with the chat template (``template``, else the tokenizer's),
    the assistant turns trained; a leading BOS the template writes is left to the encoding."""
    def render(turns, prompt: bool) -> str:
        return tokenizer.apply_chat_template(list(turns), chat_template=template, tokenize=False,
                                             add_generation_prompt=prompt)

    full = render(messages, False)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    pieces, pos = [], 0
    for i in turns:
        before, upto = render(messages[:i], True), render(messages[: i + 1], False)
        if not (upto.startswith(before) and before.startswith(full[:pos]) and full.startswith(upto)):
            pieces = None
            break
        pieces += [(before[pos:], False), (upto[len(before):], True)]
        pos = len(upto)
    if pieces is None:  # the template rewrites earlier turns: train the last one only
        before = render(messages[:-1], True)
        if not full.startswith(before):
            raise DataError("the chat template does not render a conversation as its prompt followed by the last "
                            "reply; it cannot mark what to train on")
        log.warning("the chat template rewrites earlier turns; only each conversation's last reply is trained")
        pieces, pos = [(before, False), (full[len(before):], True)], len(full)
    pieces.append((full[pos:], False))
    return _without_bos(tokenizer, tuple((t, trained) for t, trained in pieces if t))


def _without_bos(tokenizer, segments: Segments) -> Segments:
    """The encoding puts BOS first itself (``peftlab.data.seq2seq.prompt_ids``): drop the template's."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and getattr(tokenizer, "bos_token_id", None) is not None and segments and segments[0][0].startswith(bos):
        text, trained = segments[0]
        return ((text[len(bos):], trained), *segments[1:]) if text != bos else segments[1:]
    return segments


def prompt_of(segments: Segments) -> str:
    """What a served model is given to write the last reply: the text before the last trained piece."""
    last = max(i for i, (_, trained) in enumerate(segments) if trained)
    return "".join(text for text, _ in segments[:last])


def encode_segments(tokenizer, segments: Sequence[Segments], max_len: int):
    """Token ids and labels (``Encoded``) of conversations: ``[bos]`` then the text, the loss on the
    trained pieces only; cut at ``max_len`` tokens (counted), a conversation with nothing left to
    train dropped (logged)."""
    from peftlab.data.seq2seq import Encoded

    bos = getattr(tokenizer, "bos_token_id", None)
    out = Encoded([], [])
    dropped = 0
    for pieces in segments:
        text = "".join(t for t, _ in pieces)
        spans, at = [], 0
        for t, trained in pieces:
            if trained:
                spans.append((at, at + len(t)))
            at += len(t)
        ids, starts = _tokens(tokenizer, pieces)
        labels = [i if any(a <= s < b for a, b in spans) else -100 for i, s in zip(ids, starts)]
        if bos is not None:
            ids, labels = [bos] + ids, [-100] + labels
        out.longest_source = max(out.longest_source, len(ids))
        if len(ids) > max_len:
            ids, labels = ids[:max_len], labels[:max_len]
            out.truncated_sources += 1
        if all(x == -100 for x in labels):
            dropped += 1
            continue
        out.input_ids.append(ids)
        out.labels.append(labels)
    if dropped:
        log.warning("%d of %d conversations had no assistant token left within %d tokens; left out",
                    dropped, len(segments), max_len)
    return out


def _tokens(tokenizer, pieces: Segments) -> tuple[list[int], list[int]]:
    """The ids of the pieces' text and each token's first character: the text tokenised whole where
    the tokenizer gives offsets (fast tokenizers), else piece by piece."""
    text = "".join(t for t, _ in pieces)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [a for a, _ in enc["offset_mapping"]]
    ids, starts, at = [], [], 0
    for t, _ in pieces:
        got = tokenizer(t, add_special_tokens=False)["input_ids"]
        ids += got
        starts += [at] * len(got)
        at += len(t)
    return ids, starts
