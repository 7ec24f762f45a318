# cpp bots: a binary built with gcc 13. Its libstdc++/libgcc_s come from the gcc:13 image (public build);
# with images/build.sh --base local TOOLCHAIN is the local base, nothing is copied and Debian's
# libstdc++6 (gcc 12) serves: enough for C and for C++ binaries not needing GLIBCXX_3.4.31 (or static).
ARG BASE=the0-runtime/base:0.1.0
ARG TOOLCHAIN=gcc:13-bookworm
FROM ${TOOLCHAIN} AS toolchain
RUN mkdir -p /out/lib && for f in /usr/local/lib64/libstdc++.so.6* /usr/local/lib64/libgcc_s.so.1; do \
        [ -e "$f" ] && cp -a "$f" /out/lib/ || true; done; \
    rm -f /out/lib/*.py
FROM ${BASE}
COPY --from=toolchain /out/ /opt/the0/toolchain/
ENV LD_LIBRARY_PATH=/opt/the0/toolchain/lib
LABEL the0.runtime.runtime="cpp"
