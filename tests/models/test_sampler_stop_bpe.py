"""Stop strings with a real BPE vocabulary: multi-character tokens that hold the stop string (or more than
one copy of it), and a stop string that completes inside a token after starting in the one before.

The tokenizer is a byte-level BPE trained here with ``tokenizers`` (offline). The model is a real
:class:`~roro_jax.models.decoder.Decoder` whose weights are set so that greedy decoding follows planned token
chains: attention and MLP outputs are zero (the residual stream is the current token's embedding), the
chain tokens have orthogonal one-hot embeddings, and the LM head maps each chain token to its successor.
So what the sampler must do with the text is known exactly.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from roro_jax.models.config import DecoderConfig
from roro_jax.models.decoder import Decoder
from roro_jax.models.sampler import Sampler, SamplingParams

SEP = "<|sep|>"
CORPUS = ["Step one is done.\n\n\n\n", "Then\n\n\n", "Then\na", "xa bc ab", "Step two\n\n\n\n", "xa xa bc bc ab ab",
          "Then\n\n\n", "So\nthe answer is 7\n\n", "ab", "bc", "xa", "the end"] * 20


@pytest.fixture(scope="module")
def bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>", SEP], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   additional_special_tokens=[SEP])


def one_token(tok, text: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids, [tok.decode([i]) for i in ids])
    return ids[0]


def chain_model(vocab: int, chains: list[list[int]]) -> Decoder:
    """A decoder whose greedy continuation of token ``c[i]`` is ``c[i + 1]`` for every chain ``c``."""
    succ = {a: b for c in chains for a, b in zip(c, c[1:])}
    toks = sorted(set(succ) | set(succ.values()))
    hidden = 32
    assert len(toks) <= hidden and len(succ) == sum(len(c) - 1 for c in chains)  # first-order and distinct
    cfg = DecoderConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_layers=1, num_heads=4,
                        num_kv_heads=2, head_dim=8, eos_token_ids=(1,), pad_token_id=0)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    emb = np.zeros((vocab, hidden), np.float32)
    head = np.zeros((hidden, vocab), np.float32)
    for k, t in enumerate(toks):
        emb[t, k] = 1.0
    for a, b in succ.items():
        head[toks.index(a), b] = 1.0
    model.embed.embedding[...] = jnp.asarray(emb)
    model.lm_head.kernel[...] = jnp.asarray(head)
    for layer in model.layers:
        layer.attn.o_proj.kernel[...] = 0.0
        layer.mlp.down_proj.kernel[...] = 0.0
    return model


def test_stop_string_cut_at_its_first_occurrence(bpe):
    t = {s: one_token(bpe, s) for s in ("Step", "\n\n\n\n", "Then", "\n", "\n\n\n", "xa", "bc", "ab", "So", "the", "z")}
    sep = bpe.convert_tokens_to_ids(SEP)
    chains = [
        [t["So"], t["Step"], t["\n\n\n\n"], t["the"]],  # "\n\n" twice inside one token
        [t["the"], t["Then"], t["\n"], t["\n\n\n"]],  # starts in "\n", completes inside "\n\n\n", then again
        [t["z"], t["xa"], sep, t["bc"], t["ab"]],  # raw "xa<|sep|>bcab": "ab" only at the end; decoded "xabcab"
    ]
    sampler = Sampler(chain_model(len(bpe), chains), bpe, eos_token_ids=(1,))
    prompts = [[c[0]] for c in chains]
    for include in (True, False):
        params = [SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True, stop=(s,),
                                 include_stop_str_in_output=include) for s in ("\n\n", "\n\n", "ab")]
        outs = sampler.generate(prompts, params)
        assert [o.token_ids for o in outs] == [chains[0][1:3], chains[1][1:], chains[2][1:]]  # stopped before "the"
        assert all(o.finish_reason == "stop" for o in outs)
        got = [o.text for o in outs]
        if include:
            assert got == ["Step\n\n", "Then\n\n", "xabcab"]
        else:  # the returned text never holds the stop string
            assert got == ["Step", "Then", "xabc"]
    # the stop string's first occurrence in the decoded text is not always the one that stopped generation:
    # "xa" + "bc" read as "xabc" once the special token between them is skipped, but the raw text the
    # stop matcher reads is "xa<|sep|>bc"
    assert bpe.decode(chains[2][1:], skip_special_tokens=True).find("ab") == 1
