"""`latchkey permissions import`: what a file must hold, checked locally before anything is sent."""

from __future__ import annotations

import json

import pytest

from services.permissions.bulk_import import BadInput, Record, detect_format, parse, prepare

DOOR_A = "5f0c1d4e-8a7b-4c2d-9e1f-0a1b2c3d4e5f"
DOOR_B = "6a1d2e5f-9b8c-4d3e-8f2a-1b2c3d4e5f60"


def csv_records(text: str) -> list[Record]:
    return parse(text.encode(), "csv")


def jsonl_records(*rows: object) -> list[Record]:
    return parse("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode(), "jsonl")


def refused(text: str, fmt: str = "csv") -> str:
    with pytest.raises(BadInput) as caught:
        parse(text.encode(), fmt)
    return str(caught.value)


def test_csv_records_carry_their_line_and_split_door_ids_on_semicolons():
    records = csv_records("external_id,display_name,email,door_ids\n"
                          f"e-1,Ada,ada@example.com,{DOOR_A};{DOOR_B.upper()}\n"
                          "\n"
                          "e-2,Grace,,\n")
    assert records == [Record(2, "e-1", "Ada", "ada@example.com", (DOOR_A, DOOR_B)),
                       Record(4, "e-2", "Grace", "", ())]


def test_csv_columns_may_come_in_any_order_and_optional_ones_may_be_left_out():
    assert csv_records("display_name,external_id\nAda,e-1\n") == [Record(2, "e-1", "Ada")]


def test_a_quoted_field_over_two_lines_is_refused_at_the_line_its_record_starts():
    text = 'external_id,display_name\ne-1,Ada\ne-2,"Grace\nHopper"\n'
    assert refused(text) == "line 3, field display_name: must not contain control characters"


def test_a_utf8_byte_order_mark_before_the_header_is_ignored():
    assert parse("\ufeffexternal_id,display_name\ne-1,Ada\n".encode(), "csv")[0].external_id == "e-1"


def test_a_csv_file_without_a_header_row_is_refused():
    assert "header row is required" in refused("")


def test_an_unknown_column_is_refused_by_name():
    assert "unknown column 'phone'" in refused("external_id,display_name,phone\ne-1,Ada,555\n")


def test_a_missing_required_column_is_refused_by_name():
    assert "the column 'external_id' is required" in refused("display_name\nAda\n")


def test_a_row_with_the_wrong_number_of_fields_names_its_line():
    assert refused("external_id,display_name\ne-1,Ada\ne-2,Grace,extra\n").startswith("line 3: 3 fields")


@pytest.mark.parametrize(("row", "field", "reason"), [
    (",Ada,", "external_id", "is required"),
    ("e-1,  ,", "display_name", "is required"),
    ("e-1,Ada," + "x" * 321, "email", "at most 320 characters"),
    ("e-1," + "n" * 201 + ",", "display_name", "at most 200 characters"),
    ("e-1,Ada\tLovelace,", "display_name", "control characters"),
])
def test_a_bad_field_is_refused_with_its_line_and_name(row, field, reason):
    message = refused(f"external_id,display_name,email\ne-0,Ok,\n{row}\n")
    assert message.startswith(f"line 3, field {field}:") and reason in message


def test_a_door_id_that_is_not_a_uuid_is_refused_with_its_position():
    message = refused(f"external_id,display_name,door_ids\ne-1,Ada,{DOOR_A};lobby\n")
    assert message.startswith("line 2, field door_ids[1]:") and "'lobby' is not a door id" in message


def test_a_door_listed_twice_for_one_user_is_refused():
    assert "listed twice" in refused(f"external_id,display_name,door_ids\ne-1,Ada,{DOOR_A};{DOOR_A.upper()}\n")


def test_an_external_id_twice_in_one_file_names_both_lines():
    assert refused("external_id,display_name\ne-1,Ada\ne-2,Grace\ne-1,Alan\n") == \
        "line 4, field external_id: 'e-1' is already on line 2"


def test_a_file_with_a_header_and_no_records_is_refused():
    assert "no records" in refused("external_id,display_name\n\n")


def test_jsonl_records_take_door_ids_as_a_list_and_skip_blank_lines():
    records = jsonl_records({"external_id": "e-1", "display_name": "Ada", "door_ids": [DOOR_A]}, "",
                            {"external_id": "e-2", "display_name": "Grace\u2028Hopper", "email": None})
    assert records == [Record(1, "e-1", "Ada", "", (DOOR_A,)), Record(3, "e-2", "Grace\u2028Hopper", "", ())]


@pytest.mark.parametrize(("line", "words"), [
    ('{"external_id": "e-2", "display_name": "Grace", "phone": "555"}', "line 2: unknown field 'phone'"),
    ('{"external_id": "e-2", "display_name": 7}', "line 2, field display_name: must be a string"),
    (f'{{"external_id": "e-2", "display_name": "G", "door_ids": "{DOOR_A}"}}', "line 2, field door_ids: must be a list"),
    ('{"external_id": "e-2", "display_name": "G", "door_ids": [42]}', "line 2, field door_ids[0]:"),
    ('["e-2", "Grace"]', "line 2: a record must be a JSON object"),
    ('{"external_id": "e-2", ', "line 2: not JSON"),
])
def test_a_bad_json_line_is_refused_with_its_line(line, words):
    assert words in refused('{"external_id": "e-1", "display_name": "Ada"}\n' + line + "\n", "jsonl")


def test_a_file_that_is_not_utf8_is_refused():
    with pytest.raises(BadInput, match="not UTF-8"):
        parse(b"external_id,display_name\ne-1,Ad\xe9\n", "csv")


def test_the_format_comes_from_the_suffix_unless_given(tmp_path):
    assert detect_format(tmp_path / "users.CSV", None) == "csv"
    assert detect_format(tmp_path / "users.jsonl", None) == "jsonl"
    assert detect_format(tmp_path / "users.txt", "jsonl") == "jsonl"
    with pytest.raises(BadInput, match="--format csv or --format jsonl"):
        detect_format(tmp_path / "users.txt", None)


def test_a_plan_cuts_the_records_into_chunks_and_writes_no_state_until_a_chunk_is_done(tmp_path):
    source = tmp_path / "users.csv"
    source.write_text("external_id,display_name\n" + "".join(f"e-{i},User {i}\n" for i in range(25)))
    plan = prepare(source, chunk_size=10)
    assert [len(c) for c in plan.chunks] == [10, 10, 5]
    assert plan.done == {} and not plan.state_file.exists()
    assert plan.state_file == tmp_path / "users.csv.import-state.json"


def test_a_chunk_size_outside_what_a_batch_takes_is_refused(tmp_path):
    source = tmp_path / "users.csv"
    source.write_text("external_id,display_name\ne-1,Ada\n")
    for size in (0, 1001):
        with pytest.raises(BadInput, match="--chunk must be 1..1000"):
            prepare(source, chunk_size=size)


def test_a_changed_file_refuses_to_resume_and_restart_starts_over(tmp_path):
    source = tmp_path / "users.csv"
    source.write_text("external_id,display_name\ne-1,Ada\ne-2,Grace\n")
    plan = prepare(source, chunk_size=1)
    plan.record_done(0, ["u-1"], 0, 7)
    assert prepare(source, chunk_size=1).done == {0: {"user_ids": ["u-1"], "grants": 0, "revision": 7}}
    with pytest.raises(BadInput, match="--chunk 1"):
        prepare(source, chunk_size=2)
    source.write_text("external_id,display_name\ne-1,Ada\ne-2,Grace Hopper\n")
    with pytest.raises(BadInput, match="changed since the import.*--restart"):
        prepare(source, chunk_size=1)
    assert prepare(source, chunk_size=1, restart=True).done == {}


def test_a_file_smaller_than_one_chunk_resumes_with_the_same_chunk_option(tmp_path):
    source = tmp_path / "users.csv"
    source.write_text("external_id,display_name\ne-1,Ada\n")
    prepare(source).record_done(0, ["u-1"], 0, 3)
    assert list(prepare(source).done) == [0]


def test_a_state_file_that_is_not_one_is_refused_until_restarted(tmp_path):
    source = tmp_path / "users.csv"
    source.write_text("external_id,display_name\ne-1,Ada\n")
    (tmp_path / "users.csv.import-state.json").write_text("{not json")
    with pytest.raises(BadInput, match="not an import state file; pass --restart"):
        prepare(source)
    assert prepare(source, restart=True).done == {}
