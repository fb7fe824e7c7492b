"""The reference for the harness-overhead benchmark: LoRA SFT with transformers + peft and a plain
torch loop, nothing of the harness. Same model folder, tokenized examples, order, batch size,
optimizer, schedule, seed, autocast and attention as the harness run it is compared with.

    python bench/bare_lora.py SPEC.json      (SPEC written by bench/run.py; prints JSON timings)
"""

import json
import sys
import time

T0 = time.perf_counter()

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerFast,
    get_linear_schedule_with_warmup,  # noqa: E402
)


def main(spec_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32,
                                                 attn_implementation=spec["attn_implementation"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(spec["tokenizer"])
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=spec["r"], lora_alpha=spec["alpha"],
                                             lora_dropout=spec["dropout"], target_modules=spec["target_modules"]))
    model.train()
    examples = json.loads(open(spec["examples"]).read())
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, spec["warmup_steps"], spec["steps"])
    bs, times = spec["batch_size"], []
    startup = time.perf_counter() - T0
    for step in range(spec["steps"]):
        start = time.perf_counter()
        batch = collate(examples[(step * bs) % len(examples):][:bs])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["bf16"]):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    print(json.dumps({"startup_seconds": startup, "step_seconds": times, "final_loss": float(loss)}))


if __name__ == "__main__":
    main(sys.argv[1])
