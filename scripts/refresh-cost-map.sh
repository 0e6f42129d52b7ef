#!/usr/bin/env bash
# Rebuilds data/model_prices.json from the cost map bundled in LiteLLM's wheel (PyPI), keeping the
# providers Purser serves and the fields it reads. Usage: scripts/refresh-cost-map.sh [litellm-version]
set -euo pipefail
version="${1:-1.108.7}"
here="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pip download "litellm==$version" --no-deps -d "$tmp" >/dev/null
unzip -q -o "$tmp"/litellm-*.whl 'litellm/model_prices_and_context_window_backup.json' -d "$tmp"
python3 - "$tmp/litellm/model_prices_and_context_window_backup.json" "$here/data/model_prices.json" "$version" <<'PY'
import datetime, json, sys
src, dst, version = sys.argv[1:]
data = json.load(open(src))
providers = {"openai", "text-completion-openai", "azure", "anthropic", "groq", "mistral", "deepseek",
             "openrouter", "together_ai", "xai", "fireworks_ai", "deepinfra", "cerebras", "perplexity",
             "nvidia_nim", "gemini", "vertex_ai-language-models", "vertex_ai-anthropic_models",
             "bedrock", "bedrock_converse"}
fields = ["litellm_provider", "mode", "max_input_tokens", "max_output_tokens", "input_cost_per_token",
          "output_cost_per_token", "cache_read_input_token_cost", "cache_creation_input_token_cost",
          "output_cost_per_image", "input_cost_per_character", "input_cost_per_query", "input_cost_per_second"]
out = {"_source": {
    "from": f"litellm {version} (PyPI wheel), litellm/model_prices_and_context_window_backup.json",
    "refreshed": datetime.date.today().isoformat(),
    "script": "scripts/refresh-cost-map.sh",
    "units": "USD per token (output_cost_per_image: per image; input_cost_per_character: per character; input_cost_per_query: per search; input_cost_per_second: per second of audio)",
}}
for name, v in sorted(data.items()):
    if not isinstance(v, dict) or v.get("litellm_provider") not in providers:
        continue
    if v.get("mode") not in ("chat", "embedding", "completion", "responses", "image_generation",
                             "audio_speech", "moderation", "rerank", "audio_transcription"):
        continue
    if not any(isinstance(v.get(f), (int, float))
               for f in ("input_cost_per_token", "output_cost_per_image", "input_cost_per_character",
                         "input_cost_per_query", "input_cost_per_second")):
        continue
    entry = {f: v[f] for f in fields if f in v and v[f] is not None}
    if v.get("mode") != "audio_transcription":
        # Per-second prices elsewhere are provisioned throughput, not something a call uses.
        entry.pop("input_cost_per_second", None)
        if not any(isinstance(entry.get(f), (int, float)) for f in fields[4:]):
            continue
    out[name] = entry
json.dump(out, open(dst, "w"), indent=0, sort_keys=True)
open(dst, "a").write("\n")
print(f"{len(out) - 1} models written to {dst}")
PY
