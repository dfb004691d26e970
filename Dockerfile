# A CUDA image with mt installed; `mt` is the entry point.
#   docker build -t mt .
#   docker run --gpus all -v $PWD/work:/work -w /work mt prepare data=multi30k_en_de
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /opt/mt
COPY pyproject.toml README.md ./
COPY mt ./mt
COPY configs ./configs
COPY scripts ./scripts
# A regular (not editable) install, as from a wheel: the configs ship inside the package.
# torch comes with the base image (CUDA build); pip keeps it since it satisfies torch>=2.4
RUN pip install --no-cache-dir . && cd / && mt --version && mt train --cfg job > /dev/null
WORKDIR /work

ENTRYPOINT ["mt"]
CMD ["--help"]
