"""The one missing-video check (jobs.cli.require_video) on a command line and on a composed config."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from dinotracker.jobs.cli import require_video


@pytest.mark.parametrize("source", [[], ["experiment=quick_cpu"], OmegaConf.create({"seed": 0}),
                                    OmegaConf.create({"video": None})])
def test_no_video_exits_with_the_list(source, capsys):
    with pytest.raises(SystemExit) as e:
        require_video(source)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no video given" in err and "synthetic" in err and "+video=path" in err


def test_unknown_video_name_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        require_video(["+video=nosuch"])
    assert e.value.code == 2 and "unknown video 'nosuch'" in capsys.readouterr().err


@pytest.mark.parametrize("source", [["+video=synthetic"], ["--help"], ["+video=synthetic,horsejump", "-m"],
                                    OmegaConf.create({"video": {"name": "x"}})])
def test_a_video_passes(source):
    require_video(source)


def test_jobs_called_from_python_use_the_same_check(capsys):
    from dinotracker.jobs.fit import fit_video
    from dinotracker.jobs.preprocess import run as preprocess

    for job in (fit_video, preprocess):
        with pytest.raises(SystemExit) as e:
            job(OmegaConf.create({"seed": 0, "video": None}))
        assert e.value.code == 2 and "no video given" in capsys.readouterr().err
