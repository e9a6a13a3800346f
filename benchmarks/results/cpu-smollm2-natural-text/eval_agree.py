import sys, torch, time, json
from recycle_hf.loading import load_recycle_model
from recycle_hf.bench.quality import QualityTotals, score_continuations
torch.set_num_threads(2)
adapter = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "shipped" else None
model, tok = load_recycle_model(adapter=adapter)
batches = torch.load("/tmp/r16/heldout_seqs.pt")
tot = QualityTotals(); t = time.perf_counter()
for b in batches:
    score_continuations(model, b["sequences"], b["attention_mask"], b["width"], tot)
r = dict(adapter=adapter or "shipped", positions=tot.positions, agreement=tot.module_agrees_with_base / tot.positions,
         ppl_alt=float(torch.tensor(tot.alternating_nll / tot.positions).exp()), seconds=time.perf_counter() - t)
print(json.dumps(r)); open("/tmp/r16/evals.jsonl", "a").write(json.dumps(r) + "\n")
