using System.Runtime.InteropServices;
using Weft.Capture;
using Weft.Identity;
using Weft.Inventory;
using Weft.Node;
using Weft.Proxy;

namespace Weft.Cli;

/// <summary><c>weft agent</c>: run the node agent until SIGTERM or Ctrl-C; <c>weft uninstall</c>.</summary>
internal static class AgentCommand
{
    public const string Usage = """
        weft agent (--inventory FILE | --kubernetes [--kubeconfig FILE] [--pod-cgroup-root DIR])
                   [--node NAME] [--cgroup DIR] [--bpffs DIR] [--admin ADDR|off] [--metrics ADDR|off]
                   [--health ADDR|off]
                   [--drain-seconds N] [--idle-timeout-seconds N] [--max-connections-per-pod N]
                   [--max-inbound-per-identity N] [--max-inbound-per-address N] [--max-inbound-per-node N]
                   [--access-log json|text|off] [--no-access-log]
                   [--tunnel-keepalive-seconds N] [--tunnel-keepalive-timeout-seconds N]
                   [--trust-domain TD --ca-cert FILE --ca-key FILE --trust-bundle FILE [--ca-chain FILE]]
          Runs the node agent: captures enrolled pods' TCP traffic with eBPF and proxies it.
          --node defaults to $NODE_NAME, then the host name; --cgroup to the cgroup v2 root;
          --bpffs to /sys/fs/bpf/weft; --admin to 127.0.0.1:15000; --metrics (Prometheus /metrics) to
          :15020, every address; --health (/healthz, /ready) to :15021; --access-log (a line per finished connection on stdout) to json.
          Inbound limits (0 or absent: derived from the descriptor limit L, which the agent raises to the
          hard limit at start): --max-inbound-per-identity (CONNECT streams one peer SPIFFE ID holds, L/8),
          --max-inbound-per-address (connections one source address holds, counted from accept, L/16),
          --max-inbound-per-node (accepted inbound connections plus admitted CONNECT streams, L/2).
          Each HBONE tunnel PINGs its peer every --tunnel-keepalive-seconds (default 30) and closes, ending its
          streams, when an ACK takes longer than --tunnel-keepalive-timeout-seconds (default 10).
          --kubernetes (implied by --kubeconfig, and by running in a pod without --inventory) watches the
          Kubernetes API: in-cluster service account, else $KUBECONFIG or ~/.kube/config. Local pods'
          network namespaces are found from their cgroups under --pod-cgroup-root (default: the cgroup v2 root).
          With a CA (--ca-cert and --ca-key, PEM; --trust-bundle holds every root to trust), traffic
          between meshed pods travels in mTLS HBONE tunnels with SPIFFE identities in the trust domain
          (default cluster.local); without one it is forwarded in plaintext.
        weft uninstall [--bpffs DIR]
          Detaches every Weft eBPF program and removes every pin. Enrolled pods then talk directly.
        """;

    public static async Task<int> RunAgentAsync(CommandLine cl)
    {
        var admin = cl.Get("admin");
        var metrics = cl.Get("metrics");
        var health = cl.Get("health");
        var accessLog = cl.Flag("no-access-log") ? "off" : cl.Get("access-log") ?? "json";
        if (accessLog is not ("json" or "text" or "off"))
        {
            throw new UsageException($"--access-log wants json, text or off, got '{accessLog}'");
        }

        var proxyDefaults = new ProxyOptions();
        var (inventory, kubeconfig, podCgroupRoot) = (cl.Get("inventory"), cl.Get("kubeconfig"), cl.Get("pod-cgroup-root"));
        var kubernetes = cl.Flag("kubernetes") || kubeconfig is not null
            || (inventory is null && Environment.GetEnvironmentVariable("KUBERNETES_SERVICE_HOST") is { Length: > 0 });
        if (kubernetes ? inventory is not null : podCgroupRoot is not null)
        {
            throw new UsageException(kubernetes ? "give --inventory or --kubernetes, not both" : "--pod-cgroup-root needs --kubernetes");
        }

        var options = new AgentOptions
        {
            InventoryPath = kubernetes ? null : inventory ?? throw new UsageException("missing --inventory (or --kubernetes)"),
            Kubernetes = kubernetes ? new KubernetesApiOptions { Kubeconfig = kubeconfig, PodCgroupRoot = podCgroupRoot } : null,
            NodeName = cl.Get("node") ?? Environment.GetEnvironmentVariable("NODE_NAME") ?? Environment.MachineName,
            CgroupPath = cl.Get("cgroup"),
            PinRoot = cl.Get("bpffs") ?? "/sys/fs/bpf/weft",
            AdminAddress = admin == "off" ? null : admin ?? "127.0.0.1:15000",
            DrainGrace = TimeSpan.FromSeconds(cl.Int("drain-seconds", 20)),
            MetricsAddress = metrics == "off" ? null : metrics ?? ":15020",
            HealthAddress = health == "off" ? null : health ?? ":15021",
            AccessLog = accessLog != "off",
            AccessLogFormat = accessLog == "text" ? Weft.Telemetry.AccessLogFormat.Text : Weft.Telemetry.AccessLogFormat.Json,
            Proxy = proxyDefaults with
            {
                IdleTimeout = TimeSpan.FromSeconds(cl.Int("idle-timeout-seconds", (int)proxyDefaults.IdleTimeout.TotalSeconds)),
                MaxConnectionsPerPod = cl.Int("max-connections-per-pod", proxyDefaults.MaxConnectionsPerPod),
                Inbound = InboundLimitFlags(cl),
                TunnelKeepalive = Seconds(cl, "tunnel-keepalive-seconds", proxyDefaults.TunnelKeepalive),
                TunnelKeepaliveTimeout = Seconds(cl, "tunnel-keepalive-timeout-seconds", proxyDefaults.TunnelKeepaliveTimeout),
            },
        };
        var caCert = cl.Get("ca-cert");
        var trustDomain = cl.Get("trust-domain") ?? "cluster.local";
        if (caCert is not null)
        {
            var files = new CaFiles(caCert, cl.Require("ca-key"), cl.Require("trust-bundle", caCert), cl.Get("ca-chain"));
            options = options with { Identity = new IdentityOptions(trustDomain, files) };
        }

        cl.RejectUnknown();

        var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);

        await using var agent = new NodeAgent(options);
        await agent.StartAsync();
        Log.Info("agent", "ready");
        await stop.Task;
        Log.Info("agent", $"stopping: draining up to {options.DrainGrace.TotalSeconds:0}s; eBPF programs stay attached");
        return 0;

        void Stop(PosixSignalContext context)
        {
            context.Cancel = true;
            stop.TrySetResult();
        }
    }

    /// <summary>The inbound limits given as flags; null (all derived at start) when none is.</summary>
    private static InboundLimits? InboundLimitFlags(CommandLine cl)
    {
        var (identity, address, node) = (Limit("max-inbound-per-identity"), Limit("max-inbound-per-address"), Limit("max-inbound-per-node"));
        return identity + address + node == 0 ? null : new InboundLimits(identity, address, node);

        int Limit(string name)
        {
            var n = cl.Int(name, 0);
            return n >= 0 ? n : throw new UsageException($"--{name} wants 0 (derive it) or more, got {n}");
        }
    }

    private static TimeSpan Seconds(CommandLine cl, string name, TimeSpan fallback)
    {
        var n = cl.Int(name, (int)fallback.TotalSeconds);
        return n >= 1 ? TimeSpan.FromSeconds(n) : throw new UsageException($"--{name} wants 1 or more seconds, got {n}");
    }

    public static int Uninstall(CommandLine cl)
    {
        var pins = cl.Get("bpffs") ?? "/sys/fs/bpf/weft";
        cl.RejectUnknown();
        BpfCapture.Uninstall(pins);
        Log.Info("uninstall", $"removed Weft's eBPF programs, links and pins under {pins}");
        return 0;
    }
}
