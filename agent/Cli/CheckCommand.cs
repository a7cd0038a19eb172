using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Weft.Capture;
using Weft.Capture.Internal;

namespace Weft.Cli;

/// <summary>
/// <c>weft check</c>: each prerequisite of a node, and the health of its agent, as ✓ or ✗ with the fix,
/// in the spirit of <c>linkerd check</c>. Exit 1 when any check fails.
/// <code>
///   node:  kernel, BTF, bpffs, cgroup v2, eBPF hooks (libbpf probes), capabilities, descriptor limit
///   agent: admin API /ready, pins under --bpffs, certificates' expiry (/certs), inventory (/config_dump)
/// </code>
/// </summary>
internal static class CheckCommand
{
    public static readonly Version MinimumKernel = new(5, 15);

    /// <summary>Below this hard descriptor limit the derived inbound limits (L/2, L/8, L/16) get too small to serve a node.</summary>
    public const int MinimumDescriptors = 8192;

    /// <summary>Pins the agent makes at start (see <see cref="BpfCapture"/>): maps/ and links/ under the pin root.</summary>
    public static readonly string[] Pins =
    [
        "maps/config", "maps/enrolled", "maps/pod_addrs", "maps/inbound_listeners", "maps/agent_sockets", "maps/orig_dst",
        "links/cgroup_connect4", "links/cgroup_connect6", "links/cgroup_sockops",
    ];

    private static readonly Option<string> Bpffs = new("--bpffs") { HelpName = "DIR", Description = "Where the agent pins its maps and links.", DefaultValueFactory = _ => AgentCommand.DefaultPinRoot };
    private static readonly Option<int> ExpiryDays = new("--expiry-days") { HelpName = "N", Description = "A CA, intermediate or root certificate that expires within N days fails the check.", DefaultValueFactory = _ => 30 };
    private static readonly Option<bool> Prerequisites = new("--pre") { Description = "Only the node's prerequisites, before an agent is installed." };
    private static readonly Option<bool> Cluster = new("--cluster") { Description = "The cluster instead of this node, through the Kubernetes API: the agent DaemonSet's rollout and the CA service's replicas and TLS answer (with --node, that node's agent too)." };

    public static Command Create()
    {
        var command = new Command("check", "Checks this node's prerequisites and its agent, each ✓ or ✗ with the fix; exits 1 when any fails. With --node, checks that node's agent through the Kubernetes API (the node checks need a shell on that node); with --cluster, the agent DaemonSet and the CA service.")
        {
            Bpffs, ExpiryDays, Prerequisites, Cluster, CliOptions.Output,
        };
        AdminTarget.AddOptions(command);
        command.SetAction((result, cancellationToken) => RunAsync(result, cancellationToken));
        WeftCli.Examples(command, "weft check", "weft check --pre", "weft check -o json", "weft check --node worker-2", "weft check --cluster");
        return command;
    }

    private static async Task<int> RunAsync(ParseResult cl, CancellationToken cancellationToken)
    {
        var target = AdminTarget.From(cl, cl.GetValue(Cluster));
        var expiryDays = cl.GetValue(ExpiryDays);
        if (expiryDays < 0)
        {
            throw new UsageException($"--expiry-days wants 0 or more, got {expiryDays}");
        }

        var cluster = cl.GetValue(Cluster);
        if (cluster && cl.GetValue(Prerequisites))
        {
            throw new UsageException("--pre checks this node before an agent is installed; --cluster checks the cluster: give one of them");
        }

        var checks = new List<Check>();
        if (cluster)
        {
            try
            {
                var (kube, _) = PodPortForward.Connect(target.Kubeconfig, "--cluster", "or run weft check on a node");
                using (kube)
                {
                    checks.AddRange(await ClusterChecks.RunAsync(kube, cancellationToken).ConfigureAwait(false));
                }
            }
            catch (AdminUnreachableException e)
            {
                checks.Add(Check.Fail("kubernetes api", e.Message, "kubectl get --raw /readyz with the same kubeconfig shows whether the API server answers"));
            }
        }
        else if (target.Node is null)
        {
            checks.AddRange(NodeChecks());
        }

        if (!cl.GetValue(Prerequisites) && (!cluster || target.Node is not null))
        {
            if (target.Node is null)
            {
                checks.Add(PinsCheck(cl.GetRequiredValue(Bpffs)));
            }

            checks.AddRange(await AgentChecksAsync(target, TimeSpan.FromDays(expiryDays), cancellationToken).ConfigureAwait(false));
        }

        var output = cl.InvocationConfiguration.Output;
        await output.WriteAsync(cl.GetRequiredValue(CliOptions.Output) == "json" ? Json(checks) : Table(checks)).ConfigureAwait(false);
        return checks.Any(c => c.Status == CheckStatus.Fail) ? WeftCli.Failure : WeftCli.Ok;
    }

    internal static IEnumerable<Check> NodeChecks()
    {
        yield return KernelCheck(File.ReadAllText("/proc/sys/kernel/osrelease").Trim());
        yield return File.Exists("/sys/kernel/btf/vmlinux")
            ? Check.Ok("btf", "/sys/kernel/btf/vmlinux present")
            : Check.Warn("btf", "/sys/kernel/btf/vmlinux missing; Weft's programs do not need it (no CO-RE), bpftool and tracing tools do", "a kernel built with CONFIG_DEBUG_INFO_BTF=y");
        yield return BpffsCheck();
        yield return CgroupCheck();
        foreach (var (hook, kind, isMap, type) in BpfProbe.Needed)
        {
            yield return BpfProbe.Problem(isMap, type) is { } problem
                ? Check.Fail(hook, $"{kind}: {problem}", problem.Contains("EPERM", StringComparison.Ordinal)
                    ? "run as root, or with CAP_BPF + CAP_NET_ADMIN + CAP_SYS_ADMIN"
                    : $"a kernel ≥ {MinimumKernel} with BPF enabled (CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF, CONFIG_BPF_STREAM_PARSER), and libbpf1")
                : Check.Ok(hook, $"{kind} loads");
        }

        yield return CapabilitiesCheck(File.ReadLines("/proc/self/status"));
        yield return DescriptorCheck();
    }

    internal static Check KernelCheck(string release)
    {
        var numbers = release.Split('-', '+', '_')[0].Split('.');
        var parsed = numbers.Length >= 2 && int.TryParse(numbers[0], CultureInfo.InvariantCulture, out var major) && int.TryParse(numbers[1], CultureInfo.InvariantCulture, out var minor)
            ? new Version(major, minor)
            : null;
        return parsed is not null && parsed >= MinimumKernel
            ? Check.Ok("kernel", $"{release} (≥ {MinimumKernel})")
            : Check.Fail("kernel", $"{release}: Weft needs Linux {MinimumKernel} or newer (bpf_link for cgroups and netns, sk_lookup, SO_NETNS_COOKIE, netns cookies in sockops)", $"upgrade the node's kernel to {MinimumKernel} or newer");
    }

    private static Check BpffsCheck()
    {
        const string Root = "/sys/fs/bpf";
        var mount = Mounts.Containing(Root);
        return mount?.FsType == "bpf"
            ? Check.Ok("bpffs", $"mounted at {mount.MountPoint}")
            : Check.Fail("bpffs", $"{Root} is not a bpf filesystem (it is {mount?.FsType ?? "?"} at {mount?.MountPoint ?? "?"}); the agent pins its maps and links there", $"mount -t bpf bpf {Root} (the agent mounts it itself when it holds CAP_SYS_ADMIN in the host's mount namespace)");
    }

    private static Check CgroupCheck()
    {
        var root = Mounts.Containing("/sys/fs/cgroup");
        if (root?.FsType == "cgroup2")
        {
            return Check.Ok("cgroup v2", $"unified at {root.MountPoint}");
        }

        var v2 = Mounts.MountPointsOf("cgroup2").ToList();
        return v2.Count > 0
            ? Check.Ok("cgroup v2", $"hybrid: cgroup2 at {string.Join(", ", v2)}; give the agent --cgroup {v2[0]}")
            : Check.Fail("cgroup v2", "no cgroup2 mounted; the capture hooks attach only to cgroup v2", "boot with systemd.unified_cgroup_hierarchy=1, or mount -t cgroup2 none /sys/fs/cgroup/unified");
    }

    /// <summary>Root holds them all; otherwise the effective set must hold each (CapEff in /proc/self/status).</summary>
    internal static Check CapabilitiesCheck(IEnumerable<string> status)
    {
        (string Name, int Bit)[] needed = [("CAP_BPF", 39), ("CAP_NET_ADMIN", 12), ("CAP_SYS_ADMIN", 21)];
        var line = status.FirstOrDefault(l => l.StartsWith("CapEff:", StringComparison.Ordinal));
        var effective = line is not null && ulong.TryParse(line["CapEff:".Length..].Trim(), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var bits) ? bits : 0UL;
        var missing = needed.Where(c => (effective & (1UL << c.Bit)) == 0).Select(c => c.Name).ToList();
        return missing.Count == 0
            ? Check.Ok("capabilities", string.Join(", ", needed.Select(c => c.Name)))
            : Check.Fail("capabilities", $"missing {string.Join(", ", missing)}", "run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN (the DaemonSet adds them)");
    }

    private static Check DescriptorCheck()
    {
        if (Weft.Node.DescriptorLimit.Get() is not { } limit)
        {
            return Check.Fail("descriptor limit", "getrlimit(RLIMIT_NOFILE) failed", "check the process's limits (ulimit -Hn)");
        }

        var hard = limit.Hard;
        var shown = hard >= int.MaxValue ? "unlimited" : hard.ToString(CultureInfo.InvariantCulture);
        return hard >= MinimumDescriptors
            ? Check.Ok("descriptor limit", $"hard limit {shown}; an agent started here raises to it and derives its inbound limits from it")
            : Check.Fail("descriptor limit", $"hard limit {shown} is below {MinimumDescriptors}: the inbound limits derived from it would refuse connections early", "raise the hard limit: LimitNOFILE=1048576 in the systemd unit, or the container runtime's nofile ulimit");
    }

    internal static Check PinsCheck(string pinRoot)
    {
        var missing = Pins.Where(p => !File.Exists(Path.Combine(pinRoot, p))).ToList();
        return missing.Count == 0
            ? Check.Ok("pins", $"{Pins.Length} maps and links under {pinRoot}")
            : Check.Fail("pins", $"missing under {pinRoot}: {string.Join(", ", missing)}", "start the agent (it pins them at start); if it runs, give weft check its --bpffs");
    }

    private static async Task<List<Check>> AgentChecksAsync(AdminTarget target, TimeSpan expiryWarning, CancellationToken cancellationToken)
    {
        var checks = new List<Check>();
        PodPortForward? forward = null;
        try
        {
            forward = await target.ForwardAsync(cancellationToken).ConfigureAwait(false);
            using var client = target.Client(forward);
            try
            {
                using var ready = await client.GetAsync("ready", cancellationToken).ConfigureAwait(false);
                checks.Add(Check.Ok("agent", $"running and ready ({client.Address})"));
            }
            catch (AdminUnreachableException e) when (e.Message.Contains(" answered 503", StringComparison.Ordinal))
            {
                checks.Add(Check.Fail("agent", $"running but not ready ({client.Address}): its inventory has not synced yet", "wait, then read the agent's log for why its inventory source does not sync"));
            }

            using var config = await client.GetAsync("config_dump", cancellationToken).ConfigureAwait(false);
            checks.Add(InventoryCheck(config.RootElement, DateTimeOffset.UtcNow));
            checks.Add(CertificatesCheck(config.RootElement.GetProperty("certificates"), DateTimeOffset.UtcNow, expiryWarning));
        }
        catch (AdminUnreachableException e)
        {
            checks.RemoveAll(c => c.Name == "agent");
            checks.Add(Check.Fail("agent", AdminTarget.Explain(e, forward), target.Node is null
                ? "start it (weft agent ..., or the weft DaemonSet), or point --admin at its admin API"
                : $"kubectl -n {PodPortForward.Namespace} get pods -o wide | grep {target.Node}"));
            checks.Add(Check.Skip("inventory", "the agent did not answer"));
            checks.Add(Check.Skip("certificates", "the agent did not answer"));
        }
        finally
        {
            if (forward is not null)
            {
                await forward.DisposeAsync().ConfigureAwait(false);
            }
        }

        return checks;
    }

    internal static Check InventoryCheck(JsonElement config, DateTimeOffset now)
    {
        var version = config.TryGetProperty("inventory_version", out var v) ? v.GetInt64() : 0;
        if (version == 0 || !config.TryGetProperty("inventory_loaded_at", out var at))
        {
            return Check.Fail("inventory", "not loaded yet", "read the agent's log: it names the inventory file or Kubernetes API problem");
        }

        var age = now - at.GetDateTimeOffset();
        return Check.Ok("inventory", $"version {version}, last changed {Ago(age)} ago");
    }

    /// <summary>
    /// A workload certificate fails when invalid or its renewal is overdue (it renews itself well before
    /// expiry); a CA, intermediate or root fails within <paramref name="expiryWarning"/> of its expiry,
    /// since replacing one takes an operator.
    /// </summary>
    internal static Check CertificatesCheck(JsonElement certificates, DateTimeOffset now, TimeSpan expiryWarning)
    {
        var problems = new List<string>();
        var count = 0;
        DateTimeOffset? soonestAuthority = null;
        foreach (var cert in certificates.EnumerateArray())
        {
            count++;
            var name = cert.GetProperty("name").GetString();
            var type = cert.GetProperty("type").GetString();
            var notAfter = cert.GetProperty("not_after").GetDateTimeOffset();
            var left = notAfter - now;
            if (!cert.GetProperty("valid").GetBoolean())
            {
                problems.Add($"{type} {name} is {cert.GetProperty("status").GetString()} (not after {notAfter:yyyy-MM-ddTHH:mm:ssZ})");
            }
            else if (type == "Leaf")
            {
                if (cert.TryGetProperty("renew_at", out var r) && now - r.GetDateTimeOffset() > TimeSpan.FromMinutes(5))
                {
                    problems.Add($"Leaf {name} should have renewed at {r.GetDateTimeOffset():yyyy-MM-ddTHH:mm:ssZ} and expires in {Ago(left)}");
                }
            }
            else
            {
                if (left < expiryWarning)
                {
                    problems.Add($"{type} {name} expires in {Ago(left)} ({notAfter:yyyy-MM-ddTHH:mm:ssZ})");
                }

                soonestAuthority = soonestAuthority is { } s && s < notAfter ? s : notAfter;
            }
        }

        if (problems.Count > 0)
        {
            return Check.Fail("certificates", string.Join("; ", problems), "rotate the CA before it expires: a new --ca-cert/--ca-key (weft ca init, or your own CA), with both roots in --trust-bundle during the change; an overdue leaf: read the agent's identity log lines");
        }

        return count == 0
            ? Check.Ok("certificates", "none (the agent runs without a CA: plaintext between nodes)")
            : Check.Ok("certificates", $"{count} valid" + (soonestAuthority is { } soonest ? $"; the first CA or root expires in {Ago(soonest - now)}" : ""));
    }

    private static string Ago(TimeSpan span) => span switch
    {
        { TotalDays: >= 2 } => string.Create(CultureInfo.InvariantCulture, $"{(int)span.TotalDays}d"),
        { TotalHours: >= 2 } => string.Create(CultureInfo.InvariantCulture, $"{(int)span.TotalHours}h"),
        { TotalMinutes: >= 2 } => string.Create(CultureInfo.InvariantCulture, $"{(int)span.TotalMinutes}m"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{Math.Max(0, (int)span.TotalSeconds)}s"),
    };

    internal static string Table(IReadOnlyList<Check> checks)
    {
        var width = checks.Max(c => c.Name.Length) + 2;
        var text = new System.Text.StringBuilder();
        foreach (var check in checks)
        {
            var mark = check.Status switch { CheckStatus.Ok => "✓", CheckStatus.Fail => "✗", CheckStatus.Warn => "!", _ => "-" };
            text.Append(mark).Append(' ').Append(check.Name.PadRight(width)).Append(check.Detail).Append('\n');
            if (check.Fix is not null && check.Status is CheckStatus.Fail or CheckStatus.Warn)
            {
                text.Append(' ', width + 2).Append("fix: ").Append(check.Fix).Append('\n');
            }
        }

        var failed = checks.Count(c => c.Status == CheckStatus.Fail);
        text.Append(failed == 0 ? "all checks passed\n" : $"{failed} check{(failed == 1 ? "" : "s")} failed\n");
        return text.ToString();
    }

    internal static string Json(IReadOnlyList<Check> checks)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteBoolean("ok", checks.All(c => c.Status != CheckStatus.Fail));
            w.WriteStartArray("checks");
            foreach (var check in checks)
            {
                w.WriteStartObject();
                w.WriteString("name", check.Name);
                w.WriteString("status", check.Status.ToString().ToLowerInvariant());
                w.WriteString("detail", check.Detail);
                if (check.Fix is not null)
                {
                    w.WriteString("fix", check.Fix);
                }

                w.WriteEndObject();
            }

            w.WriteEndArray();
            w.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray()) + "\n";
    }
}

internal enum CheckStatus
{
    Ok,
    Fail,

    /// <summary>Worth knowing, not a reason to fail (e.g. BTF, which Weft's programs do not need).</summary>
    Warn,

    /// <summary>Not run: what it reads was not there (the agent did not answer).</summary>
    Skip,
}

internal sealed record Check(string Name, CheckStatus Status, string Detail, string? Fix)
{
    public static Check Ok(string name, string detail) => new(name, CheckStatus.Ok, detail, null);

    public static Check Fail(string name, string detail, string fix) => new(name, CheckStatus.Fail, detail, fix);

    public static Check Warn(string name, string detail, string fix) => new(name, CheckStatus.Warn, detail, fix);

    public static Check Skip(string name, string detail) => new(name, CheckStatus.Skip, detail, null);
}
