using System.CommandLine;
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
    private static readonly Option<string> TrustDomain = new("--trust-domain") { HelpName = "TD", Description = "SPIFFE trust domain the CA signs for.", DefaultValueFactory = _ => "cluster.local" };
    private static readonly Option<int> Days = new("--days") { HelpName = "N", Description = "How long the certificate is valid.", DefaultValueFactory = _ => 365 };
    private static readonly Option<string> CaCert = new("--ca-cert") { HelpName = "FILE", Description = "PEM CA certificate that signs.", Required = true };
    private static readonly Option<string> CaKey = new("--ca-key") { HelpName = "FILE", Description = "PEM private key of --ca-cert.", Required = true };
    private static readonly Option<string?> TrustBundle = new("--trust-bundle") { HelpName = "FILE", Description = "PEM roots to trust [default: --ca-cert]" };
    private static readonly Option<string?> CaChain = new("--ca-chain") { HelpName = "FILE", Description = "PEM intermediates between --ca-cert and the root, sent with each certificate." };

    public static Command Create()
    {
        var ca = new Command("ca", "The mesh's certificate authority: a root for trying the mesh, node certificates, and the CA service that signs workload certificates for nodes.")
        {
            CreateInit(), CreateIssueNode(),
        };
        if (BuildFeatures.Edge)
        {
            ca.Add(CreateServe());
        }

        WeftCli.Examples(ca, "weft ca init --dir /etc/weft/ca", "weft ca serve --ca-cert ca.crt --ca-key ca.key --inventory inventory.yaml");
        return ca;
    }

    private static Command CreateInit()
    {
        var dir = new Option<string>("--dir") { HelpName = "DIR", Description = "Directory to write ca.crt, ca.key and bundle.crt into (created if missing).", Required = true };
        var init = new Command("init", "Writes a new self-signed root CA (ca.crt, ca.key, bundle.crt) for `weft agent --ca-cert ...`. Production meshes bring their own CA or intermediate instead.")
        {
            dir, TrustDomain, Days,
        };
        init.SetAction(cl =>
        {
            var directory = cl.GetRequiredValue(dir);
            var trustDomain = ValidTrustDomain(cl);
            if (File.Exists(Path.Combine(directory, "ca.key")))
            {
                throw new UsageException($"{directory} already holds a CA key; refusing to overwrite it");
            }

            var files = SelfSignedRoot.Write(directory, trustDomain, TimeSpan.FromDays(ValidDays(cl)));
            var output = cl.InvocationConfiguration.Output;
            output.WriteLine($"root CA for trust domain {trustDomain} written:");
            output.WriteLine($"  weft agent ... --trust-domain {trustDomain} --ca-cert {files.CertificatePath} --ca-key {files.KeyPath} --trust-bundle {files.TrustBundlePath}");
            return 0;
        });
        WeftCli.Examples(init, "weft ca init --dir /etc/weft/ca", "weft ca init --dir ./ca --trust-domain example.org --days 30");
        return init;
    }

    private static Command CreateIssueNode()
    {
        var name = new Argument<string>("NAME") { Description = "The node's name (as in spec.nodeName)." };
        var dir = new Option<string>("--dir") { HelpName = "DIR", Description = "Directory to write node.crt and node.key into (created if missing).", Required = true };
        var command = new Command("issue-node", "Writes node.crt and node.key: node NAME's client certificate for the CA service (spiffe://<td>/weft/node/NAME).")
        {
            name, dir, CaCert, CaKey, TrustBundle, TrustDomain, Days,
        };
        command.SetAction(cl =>
        {
            var node = cl.GetRequiredValue(name);
            var directory = cl.GetRequiredValue(dir);
            if (NodeIdentity.ValidateNodeName(node) is { } problem)
            {
                throw new UsageException($"node name '{node}': {problem}");
            }

            if (File.Exists(Path.Combine(directory, "node.key")))
            {
                throw new UsageException($"{directory} already holds a node key; refusing to overwrite it");
            }

            var identity = new NodeIdentity(ValidTrustDomain(cl), node);
            var files = CaCertificates.WriteNodeCertificate(LoadAuthority(cl), identity, directory, TimeSpan.FromDays(ValidDays(cl)));
            cl.InvocationConfiguration.Output.WriteLine($"node certificate for {identity} written: {files.CertificatePath}, {files.KeyPath}");
            return 0;
        });
        WeftCli.Examples(command, "weft ca issue-node node1 --dir /etc/weft/node --ca-cert ca.crt --ca-key ca.key");
        return command;
    }

    private static Command CreateServe()
    {
        var inventory = new Option<string?>("--inventory") { HelpName = "FILE", Description = "Standalone mode: inventory YAML whose pods say which node may hold which identity; re-read when it changes. Nodes authenticate with `weft ca issue-node` certificates." };
        var kubernetes = new Option<bool>("--kubernetes") { Description = "Kubernetes mode: nodes send their projected service-account token (checked with a TokenReview); pods come from a watch of the API (in-cluster service account, else $KUBECONFIG or ~/.kube/config). Implied by --kubeconfig." };
        var kubeconfig = new Option<string?>("--kubeconfig") { HelpName = "FILE", Description = "Kubeconfig for --kubernetes." };
        var tokenAudience = new Option<string>("--token-audience") { HelpName = "AUD", Description = "Kubernetes mode: the audience callers' tokens must be for.", DefaultValueFactory = _ => "weft-ca" };
        var nodeAccount = new Option<string[]>("--node-account") { HelpName = "NS/NAME", Description = "Kubernetes mode: a service account whose pods are node agents (repeatable) [default: weft-system/weft-agent]", AllowMultipleArgumentsPerToken = false };
        var gatewayAccount = new Option<string[]>("--gateway-account") { HelpName = "NS/NAME", Description = "Kubernetes mode: a service account whose pods are gateways (weft gateway); each may ask only for its own identity spiffe://TD/ns/NS/sa/NAME (repeatable) [default: none]", AllowMultipleArgumentsPerToken = false };
        var listen = new Option<string>("--listen") { HelpName = "ADDR", Description = "The CA's gRPC endpoint (TLS).", DefaultValueFactory = _ => "0.0.0.0:15012" };
        var metrics = new Option<string>("--metrics") { HelpName = "ADDR|off", Description = "Prometheus /metrics.", DefaultValueFactory = _ => "127.0.0.1:15014" };
        var maxLifetime = new Option<int>("--max-lifetime-hours") { HelpName = "N", Description = "The longest workload certificate the CA signs.", DefaultValueFactory = _ => 24 };
        var serverNames = new Option<string?>("--server-name") { HelpName = "NAME,...", Description = "DNS names in the CA's serving certificate." };
        var publishDir = new Option<string?>("--publish-dir") { HelpName = "DIR", Description = "Standalone mode: write the trust bundle for agents as DIR/root-cert.pem (every root to trust) and DIR/signing-root.pem (the root that signs now), on start and after each change." };
        var publishConfigMap = new Option<string>("--publish-configmap") { HelpName = "NS/NAME|off", Description = "Kubernetes mode: the ConfigMap the trust bundle is published in (keys root-cert.pem, signing-root.pem), for agents to mount.", DefaultValueFactory = _ => "weft-system/weft-ca-root-cert" };
        var reloadSeconds = new Option<int>("--reload-seconds") { HelpName = "N", Description = "How often the CA's certificate, key, bundle and chain files are read for changes (a root rotation needs no restart).", DefaultValueFactory = _ => 5 };
        var command = new Command("serve", "Runs the CA service (Istio's IstioCertificateService over TLS): signs a node's CSR for a workload identity only when a pod of that service account is scheduled on that node (docs/ca.md).")
        {
            CaCert, CaKey, TrustBundle, CaChain, inventory, kubernetes, kubeconfig, tokenAudience, nodeAccount, gatewayAccount, listen, metrics, TrustDomain, maxLifetime, serverNames,
            publishDir, publishConfigMap, reloadSeconds,
        };
        command.SetAction(async (cl, _) =>
        {
            var options = new CaServerOptions
            {
                TrustDomain = ValidTrustDomain(cl),
                Listen = Endpoint(listen.Name, cl.GetRequiredValue(listen)) ?? throw new UsageException("--listen cannot be off"),
                MetricsListen = Endpoint(metrics.Name, cl.GetRequiredValue(metrics)),
                MaxLifetime = TimeSpan.FromHours(cl.GetValue(maxLifetime)),
                Files = Files(cl),
                ReloadInterval = cl.GetValue(reloadSeconds) >= 1 ? TimeSpan.FromSeconds(cl.GetValue(reloadSeconds)) : throw new UsageException("--reload-seconds wants 1 or more"),
            };
            if (cl.GetValue(serverNames) is { } names)
            {
                options = options with { ServerNames = names.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) };
            }

            if (options.MaxLifetime <= TimeSpan.Zero)
            {
                throw new UsageException("--max-lifetime-hours must be positive");
            }

            var inventoryPath = cl.GetValue(inventory);
            var kubeconfigPath = cl.GetValue(kubeconfig);
            var inKubernetes = cl.GetValue(kubernetes) || kubeconfigPath is not null;
            if (inKubernetes == (inventoryPath is not null))
            {
                throw new UsageException("give --inventory FILE (standalone, node certificates) or --kubernetes (service-account tokens and a pod watch), one of the two");
            }

            var accounts = cl.GetValue(nodeAccount) is { Length: > 0 } given ? given : ["weft-system/weft-agent"];
            var gateways = cl.GetValue(gatewayAccount) ?? [];
            foreach (var (flag, account) in accounts.Select(a => ("--node-account", a)).Concat(gateways.Select(a => ("--gateway-account", a))))
            {
                if (account.Split('/') is not [{ Length: > 0 }, { Length: > 0 }])
                {
                    throw new UsageException($"{flag} wants NAMESPACE/NAME, got '{account}'");
                }
            }

            if (gateways.Intersect(accounts, StringComparer.Ordinal).FirstOrDefault() is { } both)
            {
                throw new UsageException($"{both} cannot be both a --node-account and a --gateway-account");
            }

            var callers = new KubernetesCallerOptions { Audience = cl.GetRequiredValue(tokenAudience), NodeAccounts = accounts, GatewayAccounts = gateways };
            if (!inKubernetes && (cl.GetResult(tokenAudience) is { Implicit: false } || cl.GetValue(nodeAccount) is { Length: > 0 } || gateways.Length > 0))
            {
                throw new UsageException("--token-audience, --node-account and --gateway-account apply to --kubernetes only");
            }

            if (!inKubernetes && cl.GetResult(publishConfigMap) is { Implicit: false })
            {
                throw new UsageException("--publish-configmap applies to --kubernetes only (standalone: --publish-dir)");
            }

            if (inKubernetes && cl.GetValue(publishDir) is not null)
            {
                throw new UsageException("--publish-dir applies to --inventory only (Kubernetes: --publish-configmap)");
            }

            var configMap = cl.GetRequiredValue(publishConfigMap);
            if (configMap != "off" && configMap.Split('/') is not [{ Length: > 0 }, { Length: > 0 }])
            {
                throw new UsageException($"--publish-configmap wants NAMESPACE/NAME or off, got '{configMap}'");
            }

            if (string.IsNullOrWhiteSpace(callers.Audience))
            {
                throw new UsageException("--token-audience cannot be empty");
            }

            var authority = LoadAuthority(cl);
            var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);

            if (inKubernetes)
            {
                using var client = new KubernetesApiOptions { Kubeconfig = kubeconfigPath }.CreateClient();
                using var pods = KubernetesPodIndex.Start(client);
                // Serving before the first list would refuse every node for want of its pods.
                Log.Info("ca", $"listing pods at {(client as k8s.Kubernetes)?.BaseUri}");
                if (await Task.WhenAny(pods.WaitForListAsync(), stop.Task) == stop.Task)
                {
                    return 0;
                }

                if (configMap != "off")
                {
                    var parts = configMap.Split('/');
                    options = options with { Publisher = new ConfigMapTrustBundlePublisher(client, parts[0], parts[1]) };
                }

                await using var server = await CaServer.StartAsync(authority, client, pods, callers, options);
                return await ServeUntilStoppedAsync();
            }
            else
            {
                var store = new InventoryStore();
                using var source = FileInventorySource.Start(inventoryPath!, store);
                if (cl.GetValue(publishDir) is { } directory)
                {
                    options = options with { Publisher = new DirectoryTrustBundlePublisher(directory) };
                }

                await using var server = await CaServer.StartAsync(authority, store, options);
                return await ServeUntilStoppedAsync();
            }

            async Task<int> ServeUntilStoppedAsync()
            {
                Log.Info("ca", "ready");
                await stop.Task;
                Log.Info("ca", "stopping");
                return 0;
            }

            void Stop(PosixSignalContext context)
            {
                context.Cancel = true;
                stop.TrySetResult();
            }
        });
        WeftCli.Examples(command, "weft ca serve --ca-cert ca.crt --ca-key ca.key --inventory inventory.yaml --listen 0.0.0.0:15012",
            "weft ca serve --ca-cert ca.crt --ca-key ca.key --kubernetes --token-audience weft-ca --node-account weft-system/weft-agent --gateway-account weft-system/weft-gateway");
        return command;
    }

    private static CertificateAuthority LoadAuthority(ParseResult cl) => CertificateAuthority.Load(Files(cl));

    private static CaFiles Files(ParseResult cl)
    {
        var caCert = cl.GetRequiredValue(CaCert);
        return new CaFiles(caCert, cl.GetRequiredValue(CaKey), cl.GetValue(TrustBundle) ?? caCert, cl.GetValue(CaChain));
    }

    private static string ValidTrustDomain(ParseResult cl)
    {
        var trustDomain = cl.GetRequiredValue(TrustDomain);
        return SpiffeId.ValidateTrustDomain(trustDomain) is { } problem ? throw new UsageException($"--trust-domain: {problem}") : trustDomain;
    }

    private static int ValidDays(ParseResult cl)
    {
        var days = cl.GetValue(Days);
        return days >= 1 ? days : throw new UsageException($"--days wants 1 or more, got {days}");
    }

    private static IPEndPoint? Endpoint(string name, string value)
    {
        if (value == "off")
        {
            return null;
        }

        return IPEndPoint.TryParse(value, out var endpoint) && value.Contains(':')
            ? endpoint
            : throw new UsageException($"{name} wants ADDRESS:PORT, got '{value}'");
    }
}
