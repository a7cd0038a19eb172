using System.Net;
using System.Runtime.InteropServices;
using Weft.Ca;
using Weft.Identity;
using Weft.Inventory;

namespace Weft.Cli;

/// <summary>
/// <c>weft ca init|issue-node|serve</c>: flags only; the work is in <see cref="Weft.Ca"/> and <see cref="Weft.Identity"/>.
/// </summary>
internal static class CaCommand
{
    public const string Usage = """
        weft ca init --dir DIR [--trust-domain cluster.local] [--days 365]
          Writes a new self-signed root CA (ca.crt, ca.key, bundle.crt) for `weft agent --ca-cert ...`.
          Production meshes bring their own CA or intermediate instead.
        weft ca issue-node NAME --dir DIR --ca-cert FILE --ca-key FILE [--trust-bundle FILE] [--trust-domain cluster.local] [--days 365]
          Writes node.crt and node.key: node NAME's client certificate for the CA (spiffe://<td>/weft/node/NAME).
        weft ca serve --ca-cert FILE --ca-key FILE [--trust-bundle FILE] [--ca-chain FILE] --inventory FILE
                      [--listen 0.0.0.0:15012] [--metrics 127.0.0.1:15014|off] [--trust-domain cluster.local]
                      [--max-lifetime-hours 24] [--server-name NAME,...]
          Runs the CA service (Istio's IstioCertificateService over TLS): signs a node's CSR for a workload
          identity only when a pod of that service account is scheduled on that node (docs/ca.md).
        """;

    public static int Run(CommandLine cl)
    {
        return cl.Positional.FirstOrDefault() switch
        {
            "init" => Init(cl),
            "issue-node" => IssueNode(cl),
            "serve" => ServeAsync(cl).GetAwaiter().GetResult(),
            _ => throw new UsageException("weft ca: the actions are 'init', 'issue-node' and 'serve'"),
        };
    }

    private static int Init(CommandLine cl)
    {
        var dir = cl.Require("dir");
        var trustDomain = TrustDomain(cl);
        var days = cl.Int("days", 365);
        cl.RejectUnknown();
        if (File.Exists(Path.Combine(dir, "ca.key")))
        {
            throw new UsageException($"{dir} already holds a CA key; refusing to overwrite it");
        }

        var files = SelfSignedRoot.Write(dir, trustDomain, TimeSpan.FromDays(days));
        Console.WriteLine($"root CA for trust domain {trustDomain} written:");
        Console.WriteLine($"  weft agent ... --trust-domain {trustDomain} --ca-cert {files.CertificatePath} --ca-key {files.KeyPath} --trust-bundle {files.TrustBundlePath}");
        return 0;
    }

    private static int IssueNode(CommandLine cl)
    {
        var name = cl.Positional.ElementAtOrDefault(1) ?? throw new UsageException("weft ca issue-node: give the node's name");
        var dir = cl.Require("dir");
        var authority = LoadAuthority(cl);
        var trustDomain = TrustDomain(cl);
        var days = cl.Int("days", 365);
        cl.RejectUnknown();
        if (NodeIdentity.ValidateNodeName(name) is { } problem)
        {
            throw new UsageException($"node name '{name}': {problem}");
        }
        if (File.Exists(Path.Combine(dir, "node.key")))
        {
            throw new UsageException($"{dir} already holds a node key; refusing to overwrite it");
        }

        var node = new NodeIdentity(trustDomain, name);
        var files = CaCertificates.WriteNodeCertificate(authority, node, dir, TimeSpan.FromDays(days));
        Console.WriteLine($"node certificate for {node} written: {files.CertificatePath}, {files.KeyPath}");
        return 0;
    }

    private static async Task<int> ServeAsync(CommandLine cl)
    {
        var authority = LoadAuthority(cl);
        var inventoryPath = cl.Require("inventory");
        var options = new CaServerOptions
        {
            TrustDomain = TrustDomain(cl),
            Listen = Endpoint(cl, "listen", "0.0.0.0:15012") ?? throw new UsageException("--listen cannot be off"),
            MetricsListen = Endpoint(cl, "metrics", "127.0.0.1:15014"),
            MaxLifetime = TimeSpan.FromHours(cl.Int("max-lifetime-hours", 24)),
        };
        if (cl.Get("server-name") is { } names)
        {
            options = options with { ServerNames = names.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) };
        }
        if (options.MaxLifetime <= TimeSpan.Zero)
        {
            throw new UsageException("--max-lifetime-hours must be positive");
        }
        cl.RejectUnknown();

        var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);

        var store = new InventoryStore();
        using var inventory = FileInventorySource.Start(inventoryPath, store);
        await using var server = await CaServer.StartAsync(authority, store, options);
        Log.Info("ca", "ready");
        await stop.Task;
        Log.Info("ca", "stopping");
        return 0;

        void Stop(PosixSignalContext context)
        {
            context.Cancel = true;
            stop.TrySetResult();
        }
    }

    private static CertificateAuthority LoadAuthority(CommandLine cl)
    {
        var caCert = cl.Require("ca-cert");
        return CertificateAuthority.Load(new CaFiles(caCert, cl.Require("ca-key"), cl.Require("trust-bundle", caCert), cl.Get("ca-chain")));
    }

    private static string TrustDomain(CommandLine cl)
    {
        var trustDomain = cl.Get("trust-domain") ?? "cluster.local";
        return SpiffeId.ValidateTrustDomain(trustDomain) is { } problem ? throw new UsageException($"--trust-domain: {problem}") : trustDomain;
    }

    private static IPEndPoint? Endpoint(CommandLine cl, string name, string fallback)
    {
        var value = cl.Get(name) ?? fallback;
        if (value == "off")
        {
            return null;
        }
        return IPEndPoint.TryParse(value, out var endpoint) && value.Contains(':')
            ? endpoint
            : throw new UsageException($"--{name} wants ADDRESS:PORT, got '{value}'");
    }
}
