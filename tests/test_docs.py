"""The documentation: every code block of the getting-started and how-to pages runs and prints what it shows.

Each page runs in a fresh process, in an empty folder, with ``HOME`` a fresh
folder too (tests/docs_snippets.py says how blocks run and outputs compare).
What a page assumes the reader has is made first by its entry in
:data:`STAND_INS`, each a stand-in made by this project's own tools: the
published dataset (a generated one, with its zip archive), an S3 bucket (a
moto server on loopback), the tokenizer files of a cloned BarcodeMAE and of
CLIBD's Hugging Face text tokenizer. Nothing else is faked: the blocks run as
written, with the commands and package this checkout installs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from docs_snippets import output_matches, page_blocks, write_blocks

from bioscan_io import synth

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
#: The pages whose code is run: getting started and the how-to pages.
PAGES = ["getting-started.md", *sorted(f"how-to/{p.name}" for p in (DOCS / "how-to").glob("*.md"))]


def _published_dataset(home: Path, env: dict) -> None:
    """~/datasets/bioscan: a generated dataset in the published layout; its images also as the zip."""
    root = home / "datasets" / "bioscan"
    synth.generate(root, n_records=300, seed=5, workers=1)
    synth.pack_images(root, home / "Downloads")


def _s3_bucket(home: Path, env: dict):
    """An S3 server on loopback with the bucket ``my-bucket``, reached through the AWS_* variables."""
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="my-bucket")
    return server.stop


def _model_tokenizers(home: Path, env: dict) -> None:
    """BarcodeMAE's BPE tokenizer folder (as its clone holds it) and CLIBD's text tokenizer in the Hub cache."""
    pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    bases = ["".join("ACGT"[(i * 7 + j * 3) % 4] for j in range(658)) for i in range(64)]
    bpe.train_from_iterator(bases, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    bpe.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    folder = home / "work" / "BarcodeMAE" / "barcodebert" / "bpe_tokenizers" / "bpe_barcode_4096"
    folder.mkdir(parents=True)
    bpe.save(str(folder / "tokenizer.json"))

    words = sorted({w for line in synth.demo_root().joinpath("bioscan5m").rglob("*.csv")
                    for w in line.read_text().replace(",", " ").split() if w.isalpha()})
    vocab = home / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    snapshot = home / "hf" / "hub" / "models--prajjwal1--bert-small" / "snapshots" / ("0" * 40)
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(snapshot)
    transformers.BertConfig(hidden_size=512, num_hidden_layers=4, num_attention_heads=8).save_pretrained(snapshot)
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    env.update(HF_HOME=str(home / "hf"), HF_HUB_OFFLINE="1")


def _lightning(home: Path, env: dict) -> None:
    """Lightning importable: it imports torchvision, which tests/tv_shim.py makes importable here."""
    env["DOCS_LOAD_TORCHVISION"] = "1"


#: page -> what it assumes the reader has, made before its first block.
STAND_INS = {
    "how-to/shard-the-dataset.md": _published_dataset,
    "how-to/object-storage.md": _s3_bucket,
    "how-to/model-family.md": _model_tokenizers,
    "how-to/multi-gpu-and-resume.md": _lightning,
}


def test_every_run_page_has_code():
    assert "getting-started.md" in PAGES and len(PAGES) >= 6
    for page in PAGES:
        assert page_blocks(DOCS / page), f"{page} has no code block"


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_as_written(page, tmp_path):
    blocks = page_blocks(DOCS / page)
    home, work = tmp_path / "home", tmp_path / "home" / "work"
    work.mkdir(parents=True)
    (work / "examples").symlink_to(REPO / "examples")  # the pages run from a clone's root
    env = {**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}
    env.pop("BIOSCAN5M_ROOT", None)
    env[synth.DEMO_ENV] = str(synth.demo_root())  # generated once for the session, not once a page
    stop = STAND_INS[page](home, env) if page in STAND_INS else None
    try:
        write_blocks(blocks, tmp_path / "blocks.json")
        subprocess.run([sys.executable, str(REPO / "tests" / "docs_snippets.py"), str(tmp_path / "blocks.json"),
                        str(tmp_path / "results.json")], cwd=work, env=env, timeout=600)
    finally:
        if stop:
            stop()
    results = json.loads((tmp_path / "results.json").read_text())
    for block, result in zip(blocks, results):
        where = f"docs/{page}:{block.line}"
        assert result["error"] is None, f"{where} failed:\n{result['error']}"
        if block.output is not None:
            assert output_matches(block.output, result["output"]), (
                f"{where} printed:\n{result['output']}\nThe page shows:\n{block.output}")
    assert len(results) == len(blocks), f"docs/{page}: ran {len(results)} of {len(blocks)} blocks"


def test_a_page_that_prints_something_else_fails(tmp_path):
    """The runner's checks can fail: a wrong output, an output block after prose, a failing block."""
    page = tmp_path / "page.md"
    page.write_text('```python\nprint("3 batches")\n```\n\n```text title="Output"\n4 batches\n```\n')
    (block,) = page_blocks(page)
    assert block.output == "4 batches\n"
    assert not output_matches(block.output, "3 batches\n")
    assert output_matches("... batches\n", "3 batches\n") and output_matches("a\n...\nc\n", "a\nb b\nc\n")
    page.write_text('```bash\nfalse\n```\n\nprose\n\n```text title="Output"\nx\n```\n')
    with pytest.raises(ValueError, match="must follow a code block"):
        page_blocks(page)
    failing = tmp_path / "failing.md"
    failing.write_text('```bash\necho one\nfalse\n```\n\n```python\nprint("never run")\n```\n')
    write_blocks(page_blocks(failing), tmp_path / "b.json")
    done = subprocess.run([sys.executable, str(REPO / "tests" / "docs_snippets.py"), str(tmp_path / "b.json"),
                           str(tmp_path / "r.json")], cwd=tmp_path)
    (result,) = json.loads((tmp_path / "r.json").read_text())
    assert done.returncode == 1 and "exit status 1" in result["error"] and "one" in result["error"]
