# shellcheck shell=bash
# Sourced by tests/vm/run for `tests/vm/run arm64`: the same guest script
# (tests/vm/guest.sh) and the same watchdog, but the guest is Debian 12's
# arm64 kernel under qemu-system-aarch64 (TCG: no KVM here) with an arm64
# root filesystem in its initramfs, and the programs under test are the
# cross-built ones (scripts/cross-build-arm64 --tests). The Go peers are
# built on the host with GOARCH=arm64 (the guest has no Go toolchain).

# The smoke subset, plus the stripped Go program (its functions come from
# the pclntab, its RETs and stack checks from decoding aarch64 code).
ARM64_DEFAULT_TESTS=(
    e2e_tls:small_bodies_both_processes_both_directions
    e2e_tls:multi_mib_bodies_arrive_whole_and_in_order
    e2e_keylog:openssl_tls12_and_tls13_secrets_equal_curls_own_and_the_capture_decrypts
    e2e_shell:exec_reports_exact_argv_parent_and_result
    e2e_shell:bash_commands_with_exit_status_and_multi_line
    e2e_go:go119_plain
    e2e_go:go119_stripped
    # GnuTLS secrets: the key log function and the client random found by
    # decoding aarch64 code, checked against what the library itself
    # answers at run time (a unit test, run natively here), on mutated
    # copies, and end to end against openssl s_server's own key log.
    cleartap:discover::gnutls_keylog::tests::the_system_libgnutls_agrees_with_itself_at_run_time
    cleartap:discover::gnutls_keylog::tests::mutated_libgnutls_never_panics
    e2e_keylog:gnutls_tls12_and_tls13_secrets_equal_the_servers_key_log
    # NSS secrets: freebl's PRF and HMAC found from its vector table and
    # aarch64 code (unit tests, natively here), then end to end, client
    # and server, against OpenSSL peers' own key logs.
    cleartap:discover::nss_freebl::tests::finds_the_prf_and_hmac_of_the_installed_freebl
    cleartap:discover::nss_freebl::tests::mutated_freebl_never_panics
    e2e_keylog:nss_client_tls12_and_tls13_secrets_equal_the_servers_key_log
    e2e_keylog:nss_server_tls12_and_tls13_secrets_equal_the_clients_key_log
    # rustls (statically linked, found by its symbols), both sides
    # byte-exact; the peer is cross-built on the host. A key log label
    # whose page is not mapped yet at the call (the secret's length, the
    # 7th argument, in x6 here): the sleepable probe faults it in, the
    # plain one (forced) leaves it to be read from the process later.
    e2e_rustls:rustls_client_and_server_both_ways
    e2e_rustls:a_label_not_in_memory_at_the_call_is_still_logged
    # BoringSSL linked into an executable (the `boring` crate, cross-built
    # on the host), with its symbols and stripped: its functions and its
    # key log function found from aarch64 code (checked against the
    # symbol table, on patched and mutated copies), then both sides
    # byte-exact and the secrets equal to the program's own key log.
    e2e_boringssl:boringssl_functions_are_found_from_the_code_alone
    # OpenSSL without symbols: SSL_write and SSL_read found from the
    # aarch64 code of the guest's libssl.so.3, equal to its dynamic symbols,
    # and the internal functions its _ex functions call, with the argument
    # their count is in (`add x3, sp, #N`).
    cleartap:discover::openssl_stripped::tests::finds_ssl_write_and_read_in_the_system_libssl
    cleartap:discover::openssl_stripped::tests::finds_the_internal_functions_in_the_system_libssl
    # OpenSSL linked into a static executable and stripped (Debian's arm64
    # libssl.a, cross-linked on the host): its functions found from the
    # aarch64 code equal the unstripped build's symbols, and both
    # directions byte-exact through the plain and the _ex functions.
    e2e_claims:openssl_functions_are_found_from_the_code_alone
    e2e_claims:openssl_in_a_stripped_static_executable_is_captured_byte_exact
    e2e_claims:openssl_ex_calls_in_a_stripped_static_executable_are_captured_byte_exact
    e2e_boringssl:a_boringssl_whose_anchors_do_not_hold_is_refused_and_garbage_never_panics
    e2e_boringssl:changed_code_gives_the_same_boringssl_functions_or_none
    e2e_boringssl:boringssl_key_log_function_is_found_from_the_code_alone
    e2e_boringssl:boringssl_stripped_and_not_both_ways
    e2e_boringssl:boringssl_secrets_equal_the_programs_own_key_log
    # Android 13's shared BoringSSL (Debian's android-libboringssl): its
    # exported functions, and its key log function and client random found
    # from clang's aarch64 code, under a C peer cross-built on the host.
    e2e_boringssl:a_shared_boringssl_is_told_from_openssl_by_its_content
    e2e_boringssl:boringssl_shared_library_both_ways
    e2e_boringssl:boringssl_shared_library_secrets_equal_the_programs_own_key_log
)
ARM64_TARGET=aarch64-unknown-linux-gnu

# The newest executable named NAME-* in DIR (cargo leaves older ones)
# that holds the name of TEST: `cleartap-*` is both the library's unit
# tests and the binary's.
arm64_newest() {
    local f
    for f in $(ls -t "$1"/"$2"-* 2>/dev/null); do
        case $f in *.d | *.rlib | *.rmeta) continue ;; esac
        [ -f "$f" ] && [ -x "$f" ] && grep -q -a -F -- "${3##*::}" "$f" && { echo "$f"; return 0; }
    done
    return 1
}

# Copies FILE into the staging root STAGE at its own absolute path (the
# test binaries have the repository's and cargo's paths compiled in).
arm64_stage() {
    mkdir -p "$STAGE$(dirname "$1")"
    cp -a "$1" "$STAGE$1"
}

arm64_build_go_peers() {
    GO_DIR="$REPO/target/go-tests-arm64"
    "$HERE/go-peers" arm64 "$GO_DIR" || die "the arm64 Go peers could not be built (tests/vm/go-peers)"
}

# The rustls peer (tests/rustls/rustlspeer) for arm64, with the cross
# build's compiler and linker; sets RUSTLS_DIR to what the tests take as
# CLEARTAP_TEST_RUSTLS_PREBUILT (RUSTLS_DIR/release/rustlspeer).
arm64_build_rustls_peer() {
    local target_dir="$REPO/target/rustls-tests-arm64"
    CARGO_TARGET_DIR=$target_dir "$REPO/scripts/cross-build-arm64" \
        --manifest-path "$REPO/tests/rustls/rustlspeer/Cargo.toml" >&2 ||
        die "the cross build of the arm64 rustls peer failed (scripts/cross-build-arm64)"
    RUSTLS_DIR="$target_dir/$ARM64_TARGET"
}

# The BoringSSL peer (tests/boring/boringpeer: the `boring` crate, which
# compiles BoringSSL with the cross gcc and g++) for arm64, and its
# `strip --strip-all` copy; sets BORING_DIR to what the tests take as
# CLEARTAP_TEST_BORING_PREBUILT.
arm64_build_boring_peer() {
    local target_dir="$REPO/target/boring-tests-arm64"
    CARGO_TARGET_DIR=$target_dir CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++ \
        "$REPO/scripts/cross-build-arm64" --manifest-path "$REPO/tests/boring/boringpeer/Cargo.toml" >&2 ||
        die "the cross build of the arm64 BoringSSL peer failed (scripts/cross-build-arm64; it needs aarch64-linux-gnu-g++: scripts/install-deps --arm64)"
    BORING_DIR="$target_dir/$ARM64_TARGET/release"
    aarch64-linux-gnu-strip --strip-all -o "$BORING_DIR/boringpeer-stripped" "$BORING_DIR/boringpeer" ||
        die "aarch64-linux-gnu-strip of the BoringSSL peer failed"
}

# tests/support/boring_so_peer.c cross-built against the arm64 shared
# BoringSSL (android-libboringssl:arm64, headers from the amd64
# android-libboringssl-dev: they are the same), loading it from its
# directory (-system) or from beside itself (-origin); sets BORING_SO_DIR
# to what the tests take as CLEARTAP_TEST_BORING_SO_PEER_PREBUILT.
arm64_build_boring_so_peer() {
    local lib=/usr/lib/aarch64-linux-gnu/android variant rpath
    [ -r "$lib/libssl.so.0" ] || die "$lib/libssl.so.0 is missing: scripts/install-deps --arm64"
    [ -r /usr/include/android/openssl/is_boringssl.h ] ||
        die "/usr/include/android is missing: scripts/install-deps --test (android-libboringssl-dev)"
    BORING_SO_DIR="$REPO/target/boring-so-peer-arm64"
    mkdir -p "$BORING_SO_DIR"
    for variant in system origin; do
        rpath=$lib
        [ $variant = origin ] && rpath='$ORIGIN'
        aarch64-linux-gnu-gcc -O1 -Wall -Werror -o "$BORING_SO_DIR/boring_so_peer-$variant" \
            "$REPO/tests/support/boring_so_peer.c" -I/usr/include/android \
            "$lib/libssl.so.0" "$lib/libcrypto.so.0" "-Wl,-rpath,$rpath" ||
            die "the cross build of tests/support/boring_so_peer.c failed"
    done
}

# tests/support/claims_client.c linked with the arm64 libssl.a (Debian's
# libssl-dev:arm64) by the cross gcc, and its `strip --strip-all` copy,
# both named claims_client (their comm); sets CLAIMS_DIR to what the tests
# take as CLEARTAP_TEST_CLAIMS_PREBUILT (DIR/claims_client and
# DIR/stripped/claims_client).
arm64_build_claims_client() {
    local lib=/usr/lib/aarch64-linux-gnu
    [ -r "$lib/libssl.a" ] || die "$lib/libssl.a is missing: scripts/install-deps --arm64 (libssl-dev:arm64)"
    CLAIMS_DIR="$REPO/target/claims-client-arm64"
    mkdir -p "$CLAIMS_DIR/stripped"
    # The static link warns that getaddrinfo wants glibc's shared NSS
    # modules at run time (the client passes numeric hosts only): its
    # messages are shown only if it fails.
    aarch64-linux-gnu-gcc -O1 -Wall -Wextra -Werror -static -o "$CLAIMS_DIR/claims_client" \
        "$REPO/tests/support/claims_client.c" "$lib/libssl.a" "$lib/libcrypto.a" -ldl -lpthread \
        2>"$CLAIMS_DIR/build.log" || {
        cat "$CLAIMS_DIR/build.log" >&2
        die "the cross build of tests/support/claims_client.c failed (aarch64-linux-gnu-gcc -static)"
    }
    aarch64-linux-gnu-strip --strip-all -o "$CLAIMS_DIR/stripped/claims_client" "$CLAIMS_DIR/claims_client" ||
        die "aarch64-linux-gnu-strip of the claims client failed"
}

# Whether ARM64_TESTS holds a test of the test binary NAME.
arm64_asked() {
    case " ${ARM64_TESTS[*]}" in *" $1:"*) return 0 ;; esac
    return 1
}

# The peers the tests in ARM64_TESTS run, cross-built on the host (each
# build is a no-op when it is up to date; tests/vm/arm64-build runs them
# ahead of a run).
arm64_build_peers() {
    arm64_build_go_peers
    if arm64_asked e2e_rustls; then arm64_build_rustls_peer; fi
    if arm64_asked e2e_boringssl; then arm64_build_boring_peer && arm64_build_boring_so_peer; fi
    if arm64_asked e2e_claims; then arm64_build_claims_client; fi
}

arm64_prepare() {
    local bin_dir="${CARGO_TARGET_DIR:-$REPO/target}/$ARM64_TARGET/release"
    BIN_DIR=$bin_dir
    # e_machine 183 (EM_AARCH64) at offset 18 of the ELF header.
    [ "$(od -An -tx1 -j18 -N2 "$bin_dir/cleartap" 2>/dev/null | tr -d ' ')" = b700 ] ||
        die "no aarch64 $bin_dir/cleartap: scripts/cross-build-arm64 --tests (after scripts/install-deps --arm64)"
    command -v qemu-system-aarch64 >/dev/null || die "qemu-system-aarch64 is missing: scripts/install-deps --arm64"
    ARM64_TESTS=("$@")
    [ ${#ARM64_TESTS[@]} -gt 0 ] || ARM64_TESTS=("${ARM64_DEFAULT_TESTS[@]}")
    # Benchmarks on the host must not share the two cores with qemu (nor
    # with the qemu-user of a first rootfs build): held until the run ends.
    echo "tests/vm/run: waiting for /tmp/cleartap-capture.lock"
    exec 9>/tmp/cleartap-capture.lock
    flock 9
    local rootfs
    rootfs=$("$HERE/arm64-rootfs") || die "the arm64 root filesystem could not be built (tests/vm/arm64-rootfs)"
    IMAGE="$(dirname "$rootfs")/boot/vmlinuz"
    [ -r "$IMAGE" ] || die "no arm64 kernel at $IMAGE (tests/vm/arm64-rootfs puts it there)"
    BOOT_TIMEOUT=${CLEARTAP_VM_BOOT_TIMEOUT:-600}
    new_results arm64
    arm64_build_peers

    # What the guest needs beyond the root filesystem, at the paths the
    # binaries expect, packed as a second cpio after the first.
    STAGE="$RESULTS/stage"
    mkdir -p "$STAGE"
    local t name bin
    declare -A seen=()
    for t in "${ARM64_TESTS[@]}"; do
        name=${t%%:*}
        [ -n "${seen[$name]:-}" ] && continue
        seen[$name]=1
        bin=$(arm64_newest "$bin_dir/deps" "$name" "${t#*:}") ||
            die "no $bin_dir/deps/$name-*: scripts/cross-build-arm64 --tests"
        arm64_stage "$bin"
    done
    arm64_stage "$bin_dir/cleartap"
    # Debug info is most of their size; the guest unpacks all of it in RAM.
    find "$STAGE" -type f -perm -u+x -exec aarch64-linux-gnu-strip --strip-debug {} +
    mkdir -p "$STAGE$REPO"
    cp -a "$REPO/tests" "$STAGE$REPO/"
    rm -rf "$STAGE$REPO/tests/vm/stage"
    mkdir -p "$STAGE$GO_DIR"
    cp -a "$GO_DIR"/tlspeer-go1.19-* "$STAGE$GO_DIR/"
    local guest_cmd="CLEARTAP_VM_BIN_DIR=$bin_dir CLEARTAP_TEST_GO_PREBUILT=$GO_DIR"
    if arm64_asked e2e_rustls; then
        arm64_stage "$RUSTLS_DIR/release/rustlspeer"
        guest_cmd+=" CLEARTAP_TEST_RUSTLS_PREBUILT=$RUSTLS_DIR"
    fi
    if arm64_asked e2e_boringssl; then
        arm64_stage "$BORING_DIR/boringpeer"
        arm64_stage "$BORING_DIR/boringpeer-stripped"
        guest_cmd+=" CLEARTAP_TEST_BORING_PREBUILT=$BORING_DIR"
        arm64_stage "$BORING_SO_DIR/boring_so_peer-system"
        arm64_stage "$BORING_SO_DIR/boring_so_peer-origin"
        guest_cmd+=" CLEARTAP_TEST_BORING_SO_PEER_PREBUILT=$BORING_SO_DIR"
    fi
    if arm64_asked e2e_claims; then
        arm64_stage "$CLAIMS_DIR/claims_client"
        arm64_stage "$CLAIMS_DIR/stripped/claims_client"
        guest_cmd+=" CLEARTAP_TEST_CLAIMS_PREBUILT=$CLAIMS_DIR"
    fi
    guest_cmd+=" CLEARTAP_VM_TEST_TIMEOUT=$TEST_TIMEOUT $HERE/guest.sh /tmp/results ${ARM64_TESTS[*]}"
    cat >"$STAGE/init" <<INIT
#!/bin/bash
# The arm64 guest's first process (written by tests/vm/arm64.sh).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
chmod 1777 /tmp
hostname cleartap-arm64
$guest_cmd
echo "cleartap-vm: guest.sh exited with \$?"
sync
echo o >/proc/sysrq-trigger
sleep 60
INIT
    chmod 755 "$STAGE/init"
    (cd "$STAGE" && find . | cpio -o -H newc --quiet) >"$RESULTS/run.cpio"
    cat "$rootfs" "$RESULTS/run.cpio" >"$RESULTS/initrd.cpio"
    rm -rf "$STAGE" "$RESULTS/run.cpio"

    # cortex-a72: a plain ARMv8.0 core, cheaper to emulate than -cpu max
    # (pointer authentication in software is slow).
    LAUNCH=(qemu-system-aarch64 -M virt -cpu cortex-a72 -smp "$CPUS" -m "$MEMORY"
        -nographic -no-reboot -kernel "$IMAGE" -initrd "$RESULTS/initrd.cpio"
        -append "console=ttyAMA0 rdinit=/init panic=-1 quiet")
}
