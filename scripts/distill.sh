#!/usr/bin/env bash
# Sequence-level knowledge distillation (Kim & Rush 2016), Marian's teacher-student workflow:
# a trained teacher translates the training sources with beam search, and a smaller student
# trains on those translations instead of the human references.
#
#   scripts/distill.sh TEACHER_RUN DATA_PATH OUT_PATH STUDENT_RUN [mt train overrides...]
#
#   TEACHER_RUN  a trained run folder (mt translate run_dir=...)
#   DATA_PATH    the folder of local text files {train,valid,test}.{src,tgt}[.gz]
#   OUT_PATH     new folder for the distilled corpus: the teacher's train.TGT next to links
#                to the original train.SRC and the original validation and test files
#                (the student is still validated and tested against human references)
#   STUDENT_RUN  the student's run folder
#
# Environment: SRC=en TGT=de TRAIN=train VALID=val TEST=test_2016_flickr (Multi30k's names),
# BEAM=5, DATA=multi30k_local (the data config whose split names these are).
# Example (the student is the 6+1 layer preset):
#   scripts/distill.sh runs/m30k_seed1 ../shared/data/multi30k data-distilled/multi30k \
#       runs/m30k_student model=small_deep_shallow
# A finished translation in OUT_PATH is reused, so a stopped run can be started again.
set -euo pipefail
if [ $# -lt 4 ]; then
    sed -n '6,13p' "$0" >&2
    exit 2
fi
teacher=$1 data=$2 out=$3 student=$4
shift 4
src=${SRC:-en} tgt=${TGT:-de} train=${TRAIN:-train} valid=${VALID:-val} test=${TEST:-test_2016_flickr}
beam=${BEAM:-5} data_config=${DATA:-multi30k_local}

find_file() {  # the path of $1 or $1.gz in $data, or an error naming it
    if [ -f "$data/$1" ]; then echo "$data/$1"
    elif [ -f "$data/$1.gz" ]; then echo "$data/$1.gz"
    else echo "distill.sh: missing file $data/$1 (nor $1.gz)" >&2; exit 1; fi
}
[ -d "$teacher/checkpoints" ] || { echo "distill.sh: $teacher is not a trained run folder" >&2; exit 1; }
mkdir -p "$out"
for split in "$train" "$valid" "$test"; do
    for lang in "$src" "$tgt"; do
        [ "$split" = "$train" ] && [ "$lang" = "$tgt" ] && continue  # the teacher writes it
        path=$(find_file "$split.$lang")
        link="$out/$(basename "$path")"
        [ -e "$link" ] || ln -s "$(realpath "$path")" "$link"
    done
done

distilled="$out/$train.$tgt"
if [ -f "$distilled" ]; then
    echo "distill.sh: reusing the teacher's translation $distilled"
else
    source_file=$(find_file "$train.$src")
    echo "distill.sh: $teacher translates $source_file (beam $beam) into $distilled"
    # written under a temporary name and renamed when complete: a stopped run leaves no half file
    (case "$source_file" in *.gz) zcat "$source_file" ;; *) cat "$source_file" ;; esac) |
        mt translate run_dir="$teacher" input=- output="$distilled.partial" decode.beam="$beam"
    mv "$distilled.partial" "$distilled"
fi

echo "distill.sh: training the student $student on $out"
mt train data="$data_config" data.path="$out" data.src="$src" data.tgt="$tgt" \
    data.train="$train" data.valid="$valid" data.test="$test" \
    prepare_dir="$out.data-bin" run_dir="$student" "$@"
