using System.CommandLine;
using System.Runtime.InteropServices;
using Weft.Ca;
using Weft.Capture;
using Weft.Identity;
using Weft.Inventory;
using Weft.Node;
using Weft.Proxy;

namespace Weft.Cli;

/// <summary><c>weft agent</c>: run the node agent until SIGTERM or Ctrl-C; <c>weft uninstall</c>.</summary>
internal static class AgentCommand
{
    private static readonly Option<string?> Inventory = new("--inventory") { HelpName = "FILE", Description = "Inventory YAML (pods, services, policies) this node's agent serves; re-read when it changes." };
    private static readonly Option<bool> Kubernetes = new("--kubernetes") { Description = "Watch the Kubernetes API instead of an inventory file (in-cluster service account, else $KUBECONFIG or ~/.kube/config). Implied by --kubeconfig, and by running in a pod without --inventory." };
    private static readonly Option<string?> Kubeconfig = new("--kubeconfig") { HelpName = "FILE", Description = "Kubeconfig for --kubernetes." };
    private static readonly Option<string?> PodCgroupRoot = new("--pod-cgroup-root") { HelpName = "DIR", Description = "Where local pods' cgroups are found, to reach their network namespaces (--kubernetes) [default: the cgroup v2 root]" };
    private static readonly Option<string?> Node = new("--node") { HelpName = "NAME", Description = "This node's name [default: $NODE_NAME, then the host name]" };
    private static readonly Option<string?> Cgroup = new("--cgroup") { HelpName = "DIR", Description = "cgroup v2 directory the capture hooks attach to [default: the cgroup v2 root]" };
    private static readonly Option<string> Bpffs = new("--bpffs") { HelpName = "DIR", Description = "Where maps and links are pinned (on bpffs).", DefaultValueFactory = _ => DefaultPinRoot };
    private static readonly Option<string> Admin = new("--admin") { HelpName = "ADDR|off", Description = "Admin API (read by weft flows, weft check and the views).", DefaultValueFactory = _ => AdminClient.DefaultAddress };
    private static readonly Option<string> Metrics = new("--metrics") { HelpName = "ADDR|off", Description = "Prometheus /metrics, every address.", DefaultValueFactory = _ => ":15020" };
    private static readonly Option<string> Health = new("--health") { HelpName = "ADDR|off", Description = "/healthz and /ready, every address.", DefaultValueFactory = _ => ":15021" };
    private static readonly Option<int> DrainSeconds = new("--drain-seconds") { HelpName = "N", Description = "On SIGTERM, how long open connections may finish.", DefaultValueFactory = _ => 20 };
    private static readonly Option<int> IdleTimeoutSeconds = new("--idle-timeout-seconds") { HelpName = "N", Description = "A proxied connection with no bytes either way for this long is closed.", DefaultValueFactory = _ => (int)new ProxyOptions().IdleTimeout.TotalSeconds };
    private static readonly Option<int> MaxConnectionsPerPod = new("--max-connections-per-pod") { HelpName = "N", Description = "Connections one pod may hold through the agent, both directions together.", DefaultValueFactory = _ => new ProxyOptions().MaxConnectionsPerPod };
    private static readonly Option<int> MaxInboundPerIdentity = new("--max-inbound-per-identity") { HelpName = "N", Description = "CONNECT streams one peer SPIFFE ID holds; 0 derives it from the descriptor limit L (raised to the hard limit at start) as L/8.", DefaultValueFactory = _ => 0 };
    private static readonly Option<int> MaxInboundPerAddress = new("--max-inbound-per-address") { HelpName = "N", Description = "Connections one source address holds, counted from accept; 0: L/16.", DefaultValueFactory = _ => 0 };
    private static readonly Option<int> MaxInboundPerNode = new("--max-inbound-per-node") { HelpName = "N", Description = "Accepted inbound connections plus admitted CONNECT streams; 0: L/2.", DefaultValueFactory = _ => 0 };
    private static readonly Option<string> AccessLog = new Option<string>("--access-log") { HelpName = "json|text|off", Description = "A line per finished connection on stdout.", DefaultValueFactory = _ => "json" }.AcceptOnlyFromAmong("json", "text", "off");
    private static readonly Option<bool> NoAccessLog = new("--no-access-log") { Description = "Same as --access-log off." };
    private static readonly Option<string> TrustDomain = new("--trust-domain") { HelpName = "TD", Description = "SPIFFE trust domain of the mesh identities (with --ca-cert).", DefaultValueFactory = _ => "cluster.local" };
    private static readonly Option<string?> CaCert = new("--ca-cert") { HelpName = "FILE", Description = "PEM CA certificate that signs this node's workload certificates; with it, traffic between meshed pods travels in mTLS HBONE tunnels (without: plaintext)." };
    private static readonly Option<string?> CaKey = new("--ca-key") { HelpName = "FILE", Description = "PEM private key of --ca-cert." };
    private static readonly Option<string?> TrustBundle = new("--trust-bundle") { HelpName = "FILE", Description = "PEM roots to trust [default: --ca-cert]" };
    private static readonly Option<string?> CaChain = new("--ca-chain") { HelpName = "FILE", Description = "PEM intermediates between --ca-cert and the root, sent with each workload certificate." };
    private static readonly Option<string?> CaAddress = new("--ca-address") { HelpName = "https://HOST:PORT", Description = "The CA service (weft ca serve) that issues this node's workload certificates; the node holds no CA key (instead of --ca-cert/--ca-key). Needs --trust-bundle, and --node-cert/--node-key or --ca-token-file." };
    private static readonly Option<string?> NodeCert = new("--node-cert") { HelpName = "FILE", Description = "PEM: this node's client certificate for --ca-address (weft ca issue-node)." };
    private static readonly Option<string?> NodeKey = new("--node-key") { HelpName = "FILE", Description = "PEM: the private key of --node-cert." };
    private static readonly Option<string?> CaTokenFile = new("--ca-token-file") { HelpName = "FILE", Description = "Kubernetes mode: the agent pod's projected service-account token (audience of `weft ca serve --token-audience`), sent to --ca-address as bearer; re-read for every request." };
    private static readonly Option<string?> CaSigningRoot = new("--ca-signing-root") { HelpName = "FILE", Description = "With --ca-address: the root the CA signs with now, as it publishes it (signing-root.pem beside root-cert.pem); certificates from another root are renewed early, for a root rotation." };
    private static readonly Option<int> SvidLifetimeSeconds = new("--svid-lifetime-seconds") { HelpName = "N", Description = "Lifetime of each workload certificate (asked of --ca-address, which may cap it); renewed at half life.", DefaultValueFactory = _ => (int)SvidIssuer.DefaultLifetime.TotalSeconds };
    private static readonly Option<int> CertificateWaitSeconds = new("--certificate-wait-seconds") { HelpName = "N", Description = "With --ca-address: how long a connection of a pod with no certificate yet waits for one before it fails (NO_CERTIFICATE).", DefaultValueFactory = _ => 10 };
    private static readonly Option<int> TunnelKeepaliveSeconds = new("--tunnel-keepalive-seconds") { HelpName = "N", Description = "How often each HBONE tunnel PINGs its peer.", DefaultValueFactory = _ => (int)new ProxyOptions().TunnelKeepalive.TotalSeconds };
    private static readonly Option<int> TunnelKeepaliveTimeoutSeconds = new("--tunnel-keepalive-timeout-seconds") { HelpName = "N", Description = "A tunnel whose PING is not answered within this closes, ending its streams (UC/DC).", DefaultValueFactory = _ => (int)new ProxyOptions().TunnelKeepaliveTimeout.TotalSeconds };
    private static readonly Option<int> TunnelIdleSeconds = new("--tunnel-idle-seconds") { HelpName = "N", Description = "A pooled HBONE tunnel that carried no stream for this long closes.", DefaultValueFactory = _ => (int)new ProxyOptions().TunnelIdleTimeout.TotalSeconds };
    private static readonly Option<int> MaxTunnelsPerPod = new("--max-tunnels-per-pod") { HelpName = "N", Description = "Outbound HBONE tunnels one pod may hold; past it the least recently used idle one closes, or with none idle the connection is refused (UO).", DefaultValueFactory = _ => new ProxyOptions().MaxTunnelsPerPod };
    private static readonly Option<string> UninstallBpffs = new("--bpffs") { HelpName = "DIR", Description = "Where the agent pinned its maps and links.", DefaultValueFactory = _ => DefaultPinRoot };

    public const string DefaultPinRoot = "/sys/fs/bpf/weft";

    public static Command Create()
    {
        var command = new Command("agent", "Runs the node agent until SIGTERM or Ctrl-C: captures enrolled pods' TCP traffic with eBPF and proxies it.")
        {
            Inventory, Kubernetes, Kubeconfig, PodCgroupRoot, Node, Cgroup, Bpffs, Admin, Metrics, Health, DrainSeconds,
            IdleTimeoutSeconds, MaxConnectionsPerPod, MaxInboundPerIdentity, MaxInboundPerAddress, MaxInboundPerNode,
            AccessLog, NoAccessLog, TunnelKeepaliveSeconds, TunnelKeepaliveTimeoutSeconds, TunnelIdleSeconds, MaxTunnelsPerPod,
            TrustDomain, CaCert, CaKey, TrustBundle, CaChain, CaAddress, NodeCert, NodeKey, CaTokenFile, CaSigningRoot, SvidLifetimeSeconds, CertificateWaitSeconds,
        };
        command.SetAction((result, _) => RunAgentAsync(result));
        WeftCli.Examples(
            command,
            "weft agent --inventory /etc/weft/inventory.yaml",
            "weft agent --kubernetes --trust-domain cluster.local --ca-cert ca.crt --ca-key ca.key --trust-bundle bundle.crt",
            "weft agent --inventory inventory.yaml --ca-address https://weft-ca:15012 --node-cert node.crt --node-key node.key --trust-bundle bundle.crt");
        return command;
    }

    public static Command CreateUninstall()
    {
        var command = new Command("uninstall", "Detaches every Weft eBPF program and removes every pin. Enrolled pods then talk directly.") { UninstallBpffs };
        command.SetAction(Uninstall);
        WeftCli.Examples(command, "weft uninstall", "weft uninstall --bpffs /sys/fs/bpf/weft-test");
        return command;
    }

    public static async Task<int> RunAgentAsync(ParseResult cl)
    {
        var admin = cl.GetRequiredValue(Admin);
        var metrics = cl.GetRequiredValue(Metrics);
        var health = cl.GetRequiredValue(Health);
        var accessLog = cl.GetValue(NoAccessLog) ? "off" : cl.GetRequiredValue(AccessLog);

        var proxyDefaults = new ProxyOptions();
        var (inventory, kubeconfig, podCgroupRoot) = (cl.GetValue(Inventory), cl.GetValue(Kubeconfig), cl.GetValue(PodCgroupRoot));
        var kubernetes = cl.GetValue(Kubernetes) || kubeconfig is not null
            || (inventory is null && Environment.GetEnvironmentVariable("KUBERNETES_SERVICE_HOST") is { Length: > 0 });
        if (kubernetes ? inventory is not null : podCgroupRoot is not null)
        {
            throw new UsageException(kubernetes ? "give --inventory or --kubernetes, not both" : "--pod-cgroup-root needs --kubernetes");
        }

        var options = new AgentOptions
        {
            InventoryPath = kubernetes ? null : inventory ?? throw new UsageException("missing --inventory (or --kubernetes)"),
            Kubernetes = kubernetes ? new KubernetesApiOptions { Kubeconfig = kubeconfig, PodCgroupRoot = podCgroupRoot } : null,
            NodeName = cl.GetValue(Node) ?? Environment.GetEnvironmentVariable("NODE_NAME") ?? Environment.MachineName,
            CgroupPath = cl.GetValue(Cgroup),
            PinRoot = cl.GetRequiredValue(Bpffs),
            AdminAddress = admin == "off" ? null : admin,
            DrainGrace = TimeSpan.FromSeconds(cl.GetValue(DrainSeconds)),
            MetricsAddress = metrics == "off" ? null : metrics,
            HealthAddress = health == "off" ? null : health,
            AccessLog = accessLog != "off",
            AccessLogFormat = accessLog == "text" ? Weft.Telemetry.AccessLogFormat.Text : Weft.Telemetry.AccessLogFormat.Json,
            Proxy = proxyDefaults with
            {
                IdleTimeout = TimeSpan.FromSeconds(cl.GetValue(IdleTimeoutSeconds)),
                MaxConnectionsPerPod = cl.GetValue(MaxConnectionsPerPod),
                Inbound = InboundLimitFlags(cl),
                TunnelKeepalive = Seconds(cl, TunnelKeepaliveSeconds),
                TunnelKeepaliveTimeout = Seconds(cl, TunnelKeepaliveTimeoutSeconds),
                TunnelIdleTimeout = Seconds(cl, TunnelIdleSeconds),
                MaxTunnelsPerPod = cl.GetValue(MaxTunnelsPerPod) is > 0 and var maxTunnels ? maxTunnels : throw new UsageException("--max-tunnels-per-pod must be at least 1"),
            },
        };
        options = options with { Identity = IdentityFlags(cl) };

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

    /// <summary>How workload certificates are obtained: signed here (--ca-cert/--ca-key), from the CA service (--ca-address), or none (plaintext).</summary>
    private static IdentityOptions? IdentityFlags(ParseResult cl) => Identity(new IdentityFlagValues(
        cl.GetRequiredValue(TrustDomain), cl.GetValue(CaCert), cl.GetValue(CaKey), cl.GetValue(TrustBundle), cl.GetValue(CaChain),
        cl.GetValue(CaAddress), cl.GetValue(NodeCert), cl.GetValue(NodeKey), Seconds(cl, SvidLifetimeSeconds), Seconds(cl, CertificateWaitSeconds),
        cl.GetValue(CaTokenFile), cl.GetValue(CaSigningRoot)));

    /// <summary>The identity flags' values, as the agent and the gateway take them.</summary>
    internal sealed record IdentityFlagValues(string TrustDomain, string? CaCert, string? CaKey, string? TrustBundle, string? CaChain,
        string? CaAddress, string? NodeCert, string? NodeKey, TimeSpan SvidLifetime, TimeSpan CertificateWait, string? CaTokenFile = null, string? CaSigningRoot = null);

    /// <summary>Signed here (CA files), from the CA service, or null (no identity); a wrong combination is a <see cref="UsageException"/>.</summary>
    internal static IdentityOptions? Identity(IdentityFlagValues flags)
    {
        var (caCert, caAddress, trustDomain, lifetime) = (flags.CaCert, flags.CaAddress, flags.TrustDomain, flags.SvidLifetime);
        if (caCert is not null && caAddress is not null)
        {
            throw new UsageException("give --ca-cert/--ca-key (sign on this node) or --ca-address (ask the CA service), not both");
        }

        if (caCert is not null)
        {
            var files = new CaFiles(caCert, flags.CaKey ?? throw new UsageException("missing --ca-key (the key of --ca-cert)"), flags.TrustBundle ?? caCert, flags.CaChain);
            return new IdentityOptions(trustDomain, files) { SvidLifetime = lifetime };
        }

        if (caAddress is null)
        {
            return flags.CaKey is not null || flags.NodeCert is not null || flags.NodeKey is not null || flags.CaTokenFile is not null || flags.CaSigningRoot is not null
                ? throw new UsageException("--ca-key needs --ca-cert, and --node-cert/--node-key/--ca-token-file/--ca-signing-root need --ca-address")
                : null;
        }

        if (!Uri.TryCreate(caAddress, UriKind.Absolute, out var address) || address.Scheme != Uri.UriSchemeHttps || address.AbsolutePath != "/")
        {
            throw new UsageException($"--ca-address wants https://HOST:PORT, got '{caAddress}'");
        }

        var (nodeCert, nodeKey, tokenFile) = (flags.NodeCert, flags.NodeKey, flags.CaTokenFile);
        if (tokenFile is null && (nodeCert is null || nodeKey is null))
        {
            throw new UsageException("--ca-address needs --node-cert and --node-key (weft ca issue-node writes them), or --ca-token-file in Kubernetes");
        }

        if ((nodeCert is null) != (nodeKey is null))
        {
            throw new UsageException("--node-cert and --node-key go together");
        }

        var service = new CaServiceOptions(address, nodeCert, nodeKey) { TokenPath = tokenFile };
        var trustBundle = flags.TrustBundle ?? throw new UsageException("--ca-address needs --trust-bundle: the roots that the CA service and the mesh's peers chain to");
        return new IdentityOptions(trustDomain, null, new CaServiceClient(service))
        {
            TrustBundlePath = trustBundle,
            SigningRootPath = flags.CaSigningRoot,
            SvidLifetime = lifetime,
            IssuanceWait = flags.CertificateWait,
        };
    }

    /// <summary>The inbound limits given as flags; null (all derived at start) when none is.</summary>
    private static InboundLimits? InboundLimitFlags(ParseResult cl)
    {
        var (identity, address, node) = (Limit(MaxInboundPerIdentity), Limit(MaxInboundPerAddress), Limit(MaxInboundPerNode));
        return identity + address + node == 0 ? null : new InboundLimits(identity, address, node);

        int Limit(Option<int> option)
        {
            var n = cl.GetValue(option);
            return n >= 0 ? n : throw new UsageException($"{option.Name} wants 0 (derive it) or more, got {n}");
        }
    }

    private static TimeSpan Seconds(ParseResult cl, Option<int> option)
    {
        var n = cl.GetValue(option);
        return n >= 1 ? TimeSpan.FromSeconds(n) : throw new UsageException($"{option.Name} wants 1 or more seconds, got {n}");
    }

    public static int Uninstall(ParseResult cl)
    {
        var pins = cl.GetRequiredValue(UninstallBpffs);
        BpfCapture.Uninstall(pins);
        Log.Info("uninstall", $"removed Weft's eBPF programs, links and pins under {pins}");
        return 0;
    }
}
