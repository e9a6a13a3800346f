# Module top-1 agreement with the base on held-out natural text (documents the training run never saw).
import sys, json, torch
from recycle_hf.loading import load_recycle_model
from recycle_hf.data import load_token_blocks
torch.set_num_threads(2)
results = []
for adapter in sys.argv[1:]:
    model, tok = load_recycle_model(adapter=None if adapter == "shipped" else adapter)
    blocks = load_token_blocks(["/tmp/r16/natural_heldout.jsonl"], tok, block_size=256)
    agree = total = 0
    for s in range(0, len(blocks), 8):
        ids = blocks.input_ids[s:s+8]; am = blocks.attention_mask[s:s+8]
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=am)
        m = am[:, 1:].bool()
        agree += int(((out.logits[:, :-1].argmax(-1) == out.recycle_logits[:, :-1].argmax(-1)) & m).sum()); total += int(m.sum())
    r = {"adapter": adapter, "natural_heldout_positions": total, "agreement": agree / total}
    print(json.dumps(r)); open("/tmp/r16/evals.jsonl", "a").write(json.dumps(r) + "\n")
