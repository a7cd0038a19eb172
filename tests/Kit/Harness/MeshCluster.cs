using System.Diagnostics;
using System.Text.Json;

namespace Weft.Harness;

/// <summary>How the agents of a <see cref="MeshCluster"/> get their workload certificates.</summary>
internal enum MeshIdentity
{
    /// <summary>No CA: pod traffic between nodes is plaintext.</summary>
    None,

    /// <summary>Every agent holds the root CA's key and signs its own pods' certificates.</summary>
    LocalCa,

    /// <summary>A <c>weft ca serve</c> process (on the first node) holds the key; agents hold only the trust bundle and their node certificate.</summary>
    CaService,

    /// <summary>
    /// As <see cref="CaService"/>, for a root rotation: the CA follows its files (every second) and publishes the trust
    /// bundle (<c>--publish-dir</c>); agents trust that published <c>root-cert.pem</c> and follow <c>signing-root.pem</c>.
    /// </summary>
    CaServicePublishing,
}

/// <summary>
/// A netns cluster with a real <c>weft agent</c> process per node, each capturing its node's cgroup
/// with its own pins. Everything is torn down on dispose: agents, pins, namespaces, cgroups.
/// </summary>
internal sealed class MeshCluster : IAsyncDisposable
{
    private readonly Dictionary<string, ManagedProcess> _agents = new();
    private readonly string _dir;
    private string[]? _agentArgs;
    private bool _publishing;

    private MeshCluster(NetnsCluster cluster)
    {
        Cluster = cluster;
        _dir = Directory.CreateTempSubdirectory("weft-e2e-").FullName;
        InventoryPath = Path.Combine(_dir, "inventory.yaml");
    }

    public NetnsCluster Cluster { get; }

    public string InventoryPath { get; }

    /// <summary>The mesh CA when the cluster runs with mTLS (<see cref="StartAsync"/> with mtls: true).</summary>
    public Weft.Identity.CaFiles? Ca { get; private set; }

    /// <summary>The running CA service (<see cref="MeshIdentity.CaService"/>), null while stopped.</summary>
    public ManagedProcess? CaService { get; private set; }

    /// <summary>Where agents reach the CA service: the first node's address, port <see cref="CaPort"/>.</summary>
    public string CaAddress => $"https://{Cluster.Nodes[0].Address}:{CaPort}";

    /// <summary>The CA service's /metrics (plain HTTP, in the first node's netns).</summary>
    public string CaMetricsAddress => $"{Cluster.Nodes[0].Address}:{CaPort + 2}";

    public const int CaPort = 15012;

    public const string TrustDomain = "cluster.local";

    private static readonly TimeSpan AgentGrace = TimeSpan.FromSeconds(5);

    public ManagedProcess Agent(string node) => _agents[node];

    /// <summary>The node agent's pins; the cluster's teardown removes them (the agent keeps them on exit, by design).</summary>
    public string PinRoot(ClusterNode node) => Cluster.PinRoot(node.Name);

    /// <summary>Builds the cluster, writes the inventory and starts one agent per node.</summary>
    public static Task<MeshCluster> StartAsync(ClusterSpec spec, Func<NetnsCluster, string> inventory, params string[] agentArgs) =>
        StartAsync(spec, inventory, MeshIdentity.None, agentArgs);

    /// <summary>As above; with <paramref name="mtls"/> a fresh root CA is made and every agent tunnels with mTLS, signing locally.</summary>
    public static Task<MeshCluster> StartAsync(ClusterSpec spec, Func<NetnsCluster, string> inventory, bool mtls, params string[] agentArgs) =>
        StartAsync(spec, inventory, mtls ? MeshIdentity.LocalCa : MeshIdentity.None, agentArgs);

    /// <summary>
    /// As above, with the identity set up as <paramref name="identity"/> says. With <see cref="MeshIdentity.CaService"/> the
    /// root CA's key is given only to <c>weft ca serve</c> (started before the agents, over the same inventory file); each
    /// agent gets the trust bundle and its own node certificate from <c>weft ca issue-node</c>.
    /// </summary>
    public static async Task<MeshCluster> StartAsync(ClusterSpec spec, Func<NetnsCluster, string> inventory, MeshIdentity identity, params string[] agentArgs)
    {
        // agents drain for --drain-seconds 2 on SIGTERM: give them time to finish before SIGKILL
        var cluster = await NetnsCluster.CreateAsync(spec with { StopGracePeriod = spec.StopGracePeriod < AgentGrace ? AgentGrace : spec.StopGracePeriod });
        var mesh = new MeshCluster(cluster);
        try
        {
            cluster.OwnDirectory(mesh._dir);

            if (identity != MeshIdentity.None)
            {
                mesh.Ca = Weft.Identity.SelfSignedRoot.Write(Path.Combine(mesh._dir, "ca"), TrustDomain);
            }

            if (identity == MeshIdentity.LocalCa)
            {
                agentArgs = [.. agentArgs, "--trust-domain", TrustDomain, "--ca-cert", mesh.Ca!.CertificatePath,
                    "--ca-key", mesh.Ca.KeyPath, "--trust-bundle", mesh.Ca.TrustBundlePath];
            }

            mesh.WriteInventory(inventory(cluster));
            if (identity is MeshIdentity.CaService or MeshIdentity.CaServicePublishing)
            {
                mesh._publishing = identity == MeshIdentity.CaServicePublishing;
                await mesh.StartCaServiceAsync();
                foreach (var node in cluster.Nodes)
                {
                    var credential = await mesh.IssueNodeCertificateAsync(node);
                    await mesh.StartAgentAsync(node, [.. agentArgs, .. mesh.CaClientArgs(credential)]);
                }

                return mesh;
            }

            foreach (var node in cluster.Nodes)
            {
                await mesh.StartAgentAsync(node, agentArgs);
            }

            return mesh;
        }
        catch (Exception e) when (cluster.IsTornDown && e is not ObjectDisposedException)
        {
            // The cluster's own signal handler tore it down under the start: a process it stopped (the CA service, an
            // agent) made the wait fail first. Said as what it is, as a start on a torn-down cluster fails elsewhere.
            await mesh.DisposeAsync();
            throw new ObjectDisposedException($"cluster {cluster.RunId} was torn down while it started: {e.Message.Split('\n')[0]}", e);
        }
        catch
        {
            await mesh.DisposeAsync();
            throw;
        }
    }

    /// <summary>Starts <c>weft ca serve</c> in the first node's netns (the root key's only holder) and waits until it is ready.</summary>
    public async Task<ManagedProcess> StartCaServiceAsync(params string[] extraArgs)
    {
        if (Ca is null || CaService is { HasExited: false })
        {
            throw new InvalidOperationException(Ca is null ? "the cluster has no CA" : "the CA service is running already");
        }

        var ca = Cluster.Nodes[0].StartWeft(
            ["ca", "serve", "--ca-cert", Ca.CertificatePath, "--ca-key", Ca.KeyPath, "--trust-bundle", Ca.TrustBundlePath,
            "--trust-domain", TrustDomain, "--inventory", InventoryPath, "--listen", $"{Cluster.Nodes[0].Address}:{CaPort}",
            "--metrics", CaMetricsAddress, .. _publishing ? ["--publish-dir", PublishedBundleDirectory, "--reload-seconds", "1"] : Array.Empty<string>(), .. extraArgs]);
        CaService = ca;
        await WaitForStderrAsync(ca, line => line.Contains("ca: ready", StringComparison.Ordinal), TimeSpan.FromSeconds(30));
        return ca;
    }

    /// <summary>Stops the CA service (SIGTERM) and waits until it has exited: agents then find it unreachable.</summary>
    public async Task StopCaServiceAsync()
    {
        if (CaService is not { } ca)
        {
            return;
        }

        ca.Stop();
        await ca.WaitForExitAsync(TimeSpan.FromSeconds(20));
        CaService = null;
    }

    /// <summary>Runs <c>weft ca issue-node NAME</c> with the root CA, as an operator would, and returns where it wrote node.crt and node.key (the ones written before, when the node has them).</summary>
    public async Task<(string Certificate, string Key)> IssueNodeCertificateAsync(ClusterNode node)
    {
        var dir = Path.Combine(_dir, "nodes", node.Name);
        var (certificate, key) = (Path.Combine(dir, "node.crt"), Path.Combine(dir, "node.key"));
        if (File.Exists(certificate) && File.Exists(key))
        {
            // Another process of the node (e.g. a gateway pod on it) uses the node's credential too.
            return (certificate, key);
        }

        var (file, arguments) = WeftExecutable.Command(["ca", "issue-node", node.Name, "--dir", dir, "--ca-cert", Ca!.CertificatePath,
            "--ca-key", Ca.KeyPath, "--trust-domain", TrustDomain, "--days", "1"]);
        var start = new ProcessStartInfo(file, arguments) { RedirectStandardError = true, RedirectStandardOutput = true };
        using var process = Process.Start(start) ?? throw new HarnessException("cannot start weft ca issue-node");
        var stderr = process.StandardError.ReadToEndAsync();
        await process.StandardOutput.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0)
        {
            throw new HarnessException($"weft ca issue-node {node.Name} exited with {process.ExitCode}: {await stderr}");
        }

        return (Path.Combine(dir, "node.crt"), Path.Combine(dir, "node.key"));
    }

    /// <summary>The agent flags for a node that asks the CA service: its node credential and the trust bundle, no CA key.</summary>
    public string[] CaClientArgs((string Certificate, string Key) credential) =>
        ["--trust-domain", TrustDomain, "--ca-address", CaAddress, "--node-cert", credential.Certificate, "--node-key", credential.Key,
        .. _publishing
            ? new[] { "--trust-bundle", Path.Combine(PublishedBundleDirectory, "root-cert.pem"), "--ca-signing-root", Path.Combine(PublishedBundleDirectory, "signing-root.pem") }
            : ["--trust-bundle", Ca!.TrustBundlePath]];

    /// <summary>Where the CA publishes root-cert.pem and signing-root.pem (<see cref="MeshIdentity.CaServicePublishing"/>).</summary>
    public string PublishedBundleDirectory => Path.Combine(_dir, "published");

    /// <summary>Replaces the inventory file atomically (rename), as a config management tool would.</summary>
    public void WriteInventory(string yaml)
    {
        var temp = InventoryPath + ".tmp";
        File.WriteAllText(temp, yaml);
        File.Move(temp, InventoryPath, overwrite: true);
    }

    /// <summary>Starts <c>weft agent</c> in the node's netns and waits until it says it is ready.</summary>
    public async Task<ManagedProcess> StartAgentAsync(ClusterNode node, params string[] extraArgs)
    {
        _agentArgs ??= extraArgs;
        extraArgs = extraArgs.Length == 0 ? _agentArgs : extraArgs;
        string[] defaults = [.. extraArgs.Contains("--admin") ? [] : new[] { "--admin", "off" },
            .. extraArgs.Contains("--drain-seconds") ? [] : new[] { "--drain-seconds", "2" }];
        var agent = node.StartWeft(
            ["agent", "--node", node.Name, "--inventory", InventoryPath, "--cgroup", node.CgroupPath,
            "--bpffs", PinRoot(node), .. defaults, .. extraArgs]);
        _agents[node.Name] = agent;
        await WaitForStderrAsync(agent, line => line.Contains("agent: ready", StringComparison.Ordinal), TimeSpan.FromSeconds(30));
        return agent;
    }

    public static async Task WaitForStderrAsync(ManagedProcess process, Func<string, bool> match, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < deadline)
        {
            if (process.StderrLines.Any(match))
            {
                return;
            }

            if (process.HasExited)
            {
                throw new InvalidOperationException($"{process} exited with {process.ExitCode}:\n{process.Stderr}");
            }

            await Task.Delay(50);
        }

        throw new TimeoutException($"{process}: expected line not seen in {timeout}:\n{process.Stderr}");
    }

    /// <summary>The access-log records an agent has written so far (one JSON object per finished connection).</summary>
    public static List<JsonElement> Flows(ManagedProcess agent) =>
        agent.StdoutLines.Where(l => l.StartsWith('{')).Select(l => JsonDocument.Parse(l).RootElement).ToList();

    /// <summary>Runs the peer app in a pod to completion and returns its per-connection JSON lines.</summary>
    public static async Task<PeerRun> RunPeerAsync(ClusterPod pod, TimeSpan timeout, params string[] args)
    {
        await using var process = pod.StartWeft(["app", .. args]);
        var exit = await process.WaitForExitAsync(timeout);
        var lines = process.StdoutLines.Where(l => l.StartsWith('{')).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        return new PeerRun(exit, lines.Where(l => !l.TryGetProperty("summary", out _)).ToList(), process.Stderr);
    }

    /// <summary>
    /// Starts <c>weft app serve</c> in the pod and returns once it listens. A client started before that would race
    /// the server's start-up and see a refusal (through the mesh, a reset) that no agent caused.
    /// </summary>
    public static async Task<ManagedProcess> StartServerAsync(ClusterPod pod, params string[] args)
    {
        var server = pod.StartWeft(["app", "serve", .. args]);
        try
        {
            await server.WaitForStdoutLineAsync(l => l.Contains("\"listening\"", StringComparison.Ordinal), TimeSpan.FromSeconds(30));
            return server;
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// The cluster's teardown, which runs exactly once whoever asks first (this, or its own Ctrl-C/SIGTERM
    /// handler): SIGTERM to every process, SIGKILL after the grace period, then the agents' pins, the
    /// namespaces, the cgroups and this mesh's files.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        try
        {
            await Cluster.DisposeAsync();
        }
        finally
        {
            if (Directory.Exists(_dir))
            {
                Directory.Delete(_dir, recursive: true);
            }
        }
    }
}

internal sealed record PeerRun(int ExitCode, List<JsonElement> Connections, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}, {Connections.Count} connection(s)\n{string.Join('\n', Connections.Select(c => c.ToString()))}\n{Stderr}";
}
