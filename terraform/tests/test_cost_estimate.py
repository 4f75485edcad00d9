"""tools/cost-estimate.py runs with the standard library alone, prices what terraform/ deploys, and the
table in README.md is its current output.

The script reads the defaults of variables.tf and the alarm resources, so a change there (another
endpoint, a DLQ on by default, a new alarm) changes the estimate, and this test asks for README.md to be
regenerated: `terraform/tools/cost-estimate.py` and paste the tables between the cost-estimate markers.
"""

import importlib.util
import re
import subprocess
import sys

from conftest import TF_DIR

SCRIPT = TF_DIR / "tools" / "cost-estimate.py"


def run(*args):
    # -E -s -S: no PYTHON* variables, no user site, no site-packages (not the .venv's editable install either):
    # the standard library and prices.py beside the script (a script's folder is sys.path[0]; -I would drop it).
    result = subprocess.run(
        [sys.executable, "-E", "-s", "-S", str(SCRIPT), *args], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def table_lines(text):
    return [line for line in text.splitlines() if line.startswith("|")]


def row(output, item):
    rows = [line for line in table_lines(output) if line.startswith(f"| {item}")]
    assert len(rows) == 1, f"expected one row {item!r} in:\n{output}"
    return [c.strip() for c in rows[0].strip("|").split("|")]


def test_estimate_itemises_the_defaults_at_two_volumes():
    out = run()
    assert "1M orders / month" in out and "100M orders / month" in out
    for item in (
        "Spot workers (2 x m7i.large)",
        "EBS root volumes",
        "VPC interface endpoints (7 x 3 AZ)",
        "VPC endpoint data",
        "Route 53",
        "CloudWatch alarms",
        "CloudWatch EMF metrics",
        "CloudWatch Logs ingestion",
        "CloudWatch Logs storage",
        "KMS",
        "DynamoDB writes",
        "DynamoDB reads",
        "DynamoDB storage",
        "SQS FIFO requests",
        "**total**",
    ):
        row(out, item)
    # 7 endpoints x 3 zones x $0.01 x 730 h; the On-Demand price is printed beside the Spot one.
    assert row(out, "VPC interface endpoints")[2] == "153"
    assert "On-Demand $0.1008/h" in row(out, "Spot workers")[1]
    # No DLQ by default: 7 alarms (8 metrics, the rejected rate reads two) + target tracking's 4.
    assert row(out, "CloudWatch alarms")[1].startswith("7 alarms + 2 of target tracking = 12 alarm metrics")
    # DynamoDB writes scale with orders: 100M x 1.1 units x $0.625 / million = $68.75 at the low end.
    assert row(out, "DynamoDB writes")[3].startswith("68.75-")


def test_inputs_change_the_estimate():
    out = run("--orders", "1e6", "--spot-price", "0.035", "--instances", "3", "--interface-endpoint-az-count", "1")
    assert row(out, "Spot workers (3 x m7i.large)")[2] == f"{3 * 0.035 * 730:.2f}"
    assert row(out, "VPC interface endpoints (7 x 1 AZ)")[2] == "51.10"


def test_readme_table_is_the_current_output():
    readme = (TF_DIR / "README.md").read_text()
    m = re.search(r"<!-- cost-estimate:begin.*?-->\n(.*?)<!-- cost-estimate:end -->", readme, re.S)
    assert m, "README.md has no cost-estimate block"
    assert table_lines(m.group(1)) == table_lines(run()), (
        "README.md's cost table is not the script's output: run terraform/tools/cost-estimate.py and paste it"
    )


def test_prices_are_dated_and_sourced():
    spec = importlib.util.spec_from_file_location("prices", TF_DIR / "tools" / "prices.py")
    prices = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("prices", prices)  # dataclasses look their module up while the class is built
    spec.loader.exec_module(prices)
    assert prices.PRICES["dynamodb_write_unit"].usd == 0.625 and prices.PRICES["dynamodb_read_unit"].usd == 0.125
    assert prices.PRICES["dynamodb_write_unit"].as_of == "2024-11-01"
    for name, p in prices.PRICES.items():
        assert p.source.startswith("https://aws.amazon.com/"), name
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.as_of), name
        assert p.unit, name
