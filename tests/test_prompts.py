"""Prompt sources and their errors."""

import pytest
from hydra import compose, initialize_config_dir

from sdlab.cli import CONFIG_DIR
from sdlab.experiment import ConfigError, build_prompts
from sdlab.prompts import from_file, shapes_captions


def test_from_file_skips_blank_lines(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a red circle\n\n  a blue square  \n")
    assert from_file(str(f)) == ["a red circle", "a blue square"]


def test_empty_and_missing_prompt_files_say_what_to_do(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="has no prompts: write one prompt per line"):
        from_file(str(tmp_path / "empty.txt"))
    with pytest.raises(FileNotFoundError, match="prompts.path=FILE"):
        from_file(str(tmp_path / "nope.txt"))


def test_prompts_repeat_to_one_per_image(tmp_path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["prompts=list", "prompts.prompts=[a,b]",
                                           f"results_root={tmp_path}"])
    assert build_prompts(cfg, 5) == ["a", "b", "a", "b", "a"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["prompts=list", "prompts.prompts=[]",
                                           f"results_root={tmp_path}"])
    with pytest.raises(ConfigError, match="prompt source is empty"):
        build_prompts(cfg, 5)


def test_shapes_captions_are_the_heldout_split():
    from sdlab.shapes.dataset import get_item

    assert shapes_captions(3) == [get_item(i, "heldout").caption for i in range(3)]
    assert shapes_captions(3) != [get_item(i, "train").caption for i in range(3)]
