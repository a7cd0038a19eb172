using System.CommandLine;
using System.Net;
using System.Runtime.InteropServices;
using Weft.Gateway;
using Weft.Identity;

namespace Weft.Cli;

/// <summary><c>weft gateway</c>: flags only; the work is in <see cref="Weft.Gateway"/>.</summary>
internal static class GatewayCommand
{
    private static readonly Option<string> Inventory = new("--inventory") { HelpName = "FILE", Description = "Standalone: YAML of Services, EndpointSlices, Ingresses, Gateways, HTTPRoutes, ReferenceGrants and TLS Secrets; re-read when it changes. Without it: the Kubernetes API (in-cluster, --kubeconfig, or $KUBECONFIG)." };
    private static readonly Option<string> Kubeconfig = new("--kubeconfig") { HelpName = "FILE", Description = "Kubernetes mode with this kubeconfig (default: in-cluster service account, else $KUBECONFIG or ~/.kube/config)." };
    private static readonly Option<string[]> StatusAddress = new("--status-address") { HelpName = "IP|HOST", Description = "Kubernetes mode: the address written to Ingress status.loadBalancer and Gateway status.addresses (repeatable).", AllowMultipleArgumentsPerToken = false };
    private static readonly Option<string> PublishService = new("--publish-service") { HelpName = "NS/NAME", Description = "Kubernetes mode: publish this Service's load balancer addresses (or external IPs) in status, unless --status-address is given." };
    private static readonly Option<string> Http = new("--http") { HelpName = "ADDR|off", Description = "Plain listener: HTTP/1.1, and HTTP/2 with prior knowledge (h2c).", DefaultValueFactory = _ => "0.0.0.0:8080" };
    private static readonly Option<string> Https = new("--https") { HelpName = "ADDR|off", Description = "TLS listener: certificate by SNI, HTTP/2 or HTTP/1.1 by ALPN.", DefaultValueFactory = _ => "0.0.0.0:8443" };
    private static readonly Option<string[]> GatewayHttp = new("--gateway-http") { HelpName = "NS/NAME=ADDR", Description = "Also serve Gateway NS/NAME's HTTP listeners alone on ADDR (ADDRESS:PORT), so each Gateway can have an address of its own (repeatable); --http keeps serving every Gateway together.", AllowMultipleArgumentsPerToken = false };
    private static readonly Option<string[]> GatewayHttps = new("--gateway-https") { HelpName = "NS/NAME=ADDR", Description = "Also serve Gateway NS/NAME's HTTPS listeners alone on ADDR (ADDRESS:PORT), with its certificates only, by SNI (repeatable); --https keeps serving every Gateway together.", AllowMultipleArgumentsPerToken = false };
    private static readonly Option<string[]> GatewayStatusAddress = new("--gateway-status-address") { HelpName = "NS/NAME=IP|HOST", Description = "Kubernetes mode: the address written to status.addresses of Gateway NS/NAME, which has an address of its own (repeatable) [default: the IP of its --gateway-http/--gateway-https ADDR unless 0.0.0.0 or ::, else the shared address]", AllowMultipleArgumentsPerToken = false };
    private static readonly Option<string[]> GatewayPublishService = new("--gateway-publish-service") { HelpName = "NS/NAME=SVCNS/SVC", Description = "Kubernetes mode: publish Service SVCNS/SVC's load balancer addresses (or external IPs) in status.addresses of Gateway NS/NAME, which has an address of its own (repeatable), unless --gateway-status-address names it.", AllowMultipleArgumentsPerToken = false };
    private static readonly Option<int> MaxConnections = new("--max-connections") { HelpName = "N", Description = "Client connections held at once; further ones are closed on accept.", DefaultValueFactory = _ => 10_000 };
    private static readonly Option<int> MaxRequests = new("--max-requests") { HelpName = "N", Description = "Requests forwarded at once, WebSockets and gRPC streams included (each may hold a backend connection); further ones get 503 (UO).", DefaultValueFactory = _ => new GatewayOptions().MaxRequestsInFlight };
    private static readonly Option<string> AccessLog = new("--access-log") { HelpName = "stdout|FILE|off", Description = "One JSON line per request: method, host, path, status, duration, upstream, route, traceparent.", DefaultValueFactory = _ => "off" };
    private static readonly Option<int> Eject5xx = new("--eject-after-5xx") { HelpName = "N", Description = "An endpoint that answers N 5xx in a row is ejected for --ejection-time; 0: never for 5xx.", DefaultValueFactory = _ => 5 };
    private static readonly Option<int> EjectionTime = new("--ejection-time") { HelpName = "SECONDS", Description = "How long an ejected endpoint (connection failure or 5xx) gets no request.", DefaultValueFactory = _ => 30 };
    private static readonly Option<string?> OtlpEndpoint = new("--otlp-endpoint") { HelpName = "URL", Description = "Export a span per request to this OTLP/HTTP (protobuf) collector, e.g. http://collector:4318 (POSTed to /v1/traces) [default: $OTEL_EXPORTER_OTLP_ENDPOINT, else no spans]" };
    private static readonly Option<string> Admin = new("--admin") { HelpName = "ADDR|off", Description = "/metrics, /routes and /healthz.", DefaultValueFactory = _ => "127.0.0.1:15080" };

    // The gateway's mesh identity: the same sources as an agent's (docs/gateway.md, "The gateway in the mesh").
    private static readonly Option<string> TrustDomain = new("--trust-domain") { HelpName = "TD", Description = "SPIFFE trust domain of the mesh (with --ca-cert or --ca-address).", DefaultValueFactory = _ => "cluster.local" };
    private static readonly Option<string?> MeshNamespace = new("--mesh-namespace") { HelpName = "NS", Description = "Namespace of the gateway's SPIFFE ID spiffe://TD/ns/NS/sa/SA [default: $POD_NAMESPACE, then weft-gateway]" };
    private static readonly Option<string> MeshServiceAccount = new("--mesh-service-account") { HelpName = "SA", Description = "Service account of the gateway's SPIFFE ID.", DefaultValueFactory = _ => "weft-gateway" };
    private static readonly Option<string?> CaCert = new("--ca-cert") { HelpName = "FILE", Description = "PEM CA certificate to sign the gateway's own certificate with; with it (or --ca-address) meshed backends are reached over HBONE mTLS, the others in plaintext (without: all plaintext)." };
    private static readonly Option<string?> CaKey = new("--ca-key") { HelpName = "FILE", Description = "PEM private key of --ca-cert." };
    private static readonly Option<string?> TrustBundle = new("--trust-bundle") { HelpName = "FILE", Description = "PEM roots backends' certificates must chain to [default: --ca-cert]" };
    private static readonly Option<string?> CaChain = new("--ca-chain") { HelpName = "FILE", Description = "PEM intermediates between --ca-cert and the root." };
    private static readonly Option<string?> CaAddress = new("--ca-address") { HelpName = "https://HOST:PORT", Description = "The CA service that issues the gateway's certificate (instead of --ca-cert/--ca-key); needs --trust-bundle, and --ca-token-file (Kubernetes) or --node-cert/--node-key." };
    private static readonly Option<string?> CaTokenFile = new("--ca-token-file") { HelpName = "FILE", Description = "Kubernetes mode: the gateway pod's projected service-account token (audience of `weft ca serve --token-audience`, which must list the account in --gateway-account), sent to --ca-address; re-read for every request." };
    private static readonly Option<string?> NodeCert = new("--node-cert") { HelpName = "FILE", Description = "PEM: the node credential for --ca-address (weft ca issue-node) of the node the gateway's pod runs on." };
    private static readonly Option<string?> NodeKey = new("--node-key") { HelpName = "FILE", Description = "PEM: the private key of --node-cert." };
    private static readonly Option<int> SvidLifetimeSeconds = new("--svid-lifetime-seconds") { HelpName = "N", Description = "Lifetime of the gateway's certificate; renewed at half life.", DefaultValueFactory = _ => (int)SvidIssuer.DefaultLifetime.TotalSeconds };
    private static readonly Option<int> MaxTunnels = new("--max-tunnels") { HelpName = "N", Description = "HBONE tunnels to meshed backends held at once; past it the least recently used idle one closes, or with none idle the request gets 503 (UO).", DefaultValueFactory = _ => 1024 };

    public static Command Create()
    {
        var command = new Command("gateway", "Runs the ingress gateway: routes outside requests to Services by host and path, from Ingress (class weft) and Gateway API HTTPRoutes; no root, no eBPF (docs/gateway.md).")
        {
            Inventory, Kubeconfig, StatusAddress, PublishService, Http, Https, GatewayHttp, GatewayHttps, GatewayStatusAddress, GatewayPublishService, Admin, MaxConnections, MaxRequests, AccessLog, OtlpEndpoint, Eject5xx, EjectionTime,
            TrustDomain, MeshNamespace, MeshServiceAccount, CaCert, CaKey, TrustBundle, CaChain, CaAddress, CaTokenFile, NodeCert, NodeKey, SvidLifetimeSeconds, MaxTunnels,
        };
        command.SetAction(async (cl, _) =>
        {
            var options = new GatewayOptions
            {
                Http = Endpoint(Http.Name, cl.GetRequiredValue(Http)),
                Https = Endpoint(Https.Name, cl.GetRequiredValue(Https)),
                GatewayHttp = GatewayEndpoints(GatewayHttp.Name, cl.GetValue(GatewayHttp) ?? []),
                GatewayHttps = GatewayEndpoints(GatewayHttps.Name, cl.GetValue(GatewayHttps) ?? []),
                Admin = Endpoint(Admin.Name, cl.GetRequiredValue(Admin)),
                MaxConnections = cl.GetValue(MaxConnections),
                MaxRequestsInFlight = cl.GetValue(MaxRequests),
                AccessLog = cl.GetRequiredValue(AccessLog) is var log && log != "off" ? log : null,
                Consecutive5xxToEject = cl.GetValue(Eject5xx),
                EjectionTime = TimeSpan.FromSeconds(cl.GetValue(EjectionTime)),
                Tracing = Tracing(cl.GetValue(OtlpEndpoint) ?? (Environment.GetEnvironmentVariable("OTEL_EXPORTER_OTLP_ENDPOINT") is { Length: > 0 } env ? env : null)),
            };
            if (options.Consecutive5xxToEject < 0 || options.EjectionTime <= TimeSpan.Zero)
            {
                throw new UsageException("--eject-after-5xx must be 0 or more and --ejection-time at least 1");
            }

            if (options.MaxConnections < 1 || options.MaxRequestsInFlight < 1)
            {
                throw new UsageException("--max-connections and --max-requests must be at least 1");
            }

            if (options.Http is null && options.Https is null)
            {
                throw new UsageException("--http and --https cannot both be off");
            }

            DistinctAddresses(options);

            var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);

            var meshOptions = MeshFlags(cl);
            var metrics = new GatewayMetrics(Environment.GetEnvironmentVariable("POD_NAMESPACE") ?? "");
            var inventory = cl.GetValue(Inventory);
            var publish = cl.GetValue(PublishService);
            var gatewayStatus = GatewayStatus(options, cl.GetValue(GatewayStatusAddress) ?? [], cl.GetValue(GatewayPublishService) ?? []);
            if (inventory is not null && (cl.GetValue(Kubeconfig) is not null || publish is not null || cl.GetValue(StatusAddress) is { Length: > 0 }
                || cl.GetValue(GatewayStatusAddress) is { Length: > 0 } || cl.GetValue(GatewayPublishService) is { Length: > 0 }))
            {
                throw new UsageException("--inventory is the standalone mode; --kubeconfig, --status-address, --publish-service, --gateway-status-address and --gateway-publish-service are for the Kubernetes mode");
            }

            if (publish is not null && publish.Split('/') is not [{ Length: > 0 }, { Length: > 0 }])
            {
                throw new UsageException($"--publish-service wants NAMESPACE/NAME, got '{publish}'");
            }

            var ownAddresses = options.GatewayHttp.Keys.Union(options.GatewayHttps.Keys, StringComparer.Ordinal).ToList();
            if (inventory is null)
            {
                foreach (var gateway in ownAddresses.Where(g => !gatewayStatus.ContainsKey(g)))
                {
                    Log.Warn("gateway", $"Gateway {gateway} is served on an address of its own that names no IP (0.0.0.0 or ::): its status.addresses are the shared ones; "
                        + $"say where it is reached with --gateway-status-address {gateway}=IP or --gateway-publish-service {gateway}=NS/SERVICE");
                }
            }

            using var file = inventory is null ? null : GatewayConfigSource.Start(inventory, metrics, ownAddresses: ownAddresses);
            using var cluster = inventory is not null ? null : GatewayKubernetesSource.Start(new Weft.Inventory.KubernetesApiOptions { Kubeconfig = cl.GetValue(Kubeconfig), ReadAnswersAhead = true }, metrics, new GatewayKubernetesOptions
            {
                Status = new GatewayStatusOptions { Addresses = cl.GetValue(StatusAddress) ?? [], PublishService = publish, Gateways = gatewayStatus },
                MeshMembership = meshOptions is not null,
                OwnAddresses = ownAddresses,
            });
            using var mesh = meshOptions is null ? null : await GatewayMesh.StartAsync(meshOptions, file is not null ? () => file.Store.Current : cluster!.Mesh!);
            if (mesh is not null)
            {
                metrics.Mesh(mesh);
            }

            Func<RouteTable> routes = file is not null ? () => file.Current : () => cluster!.Current;
            Func<string?> error = file is not null ? () => file.LastError?.Message : () => cluster!.LastError;
            await using var server = await GatewayServer.StartAsync(options, routes, metrics, error, mesh: mesh);
            Log.Info("gateway", "ready");
            await stop.Task;
            Log.Info("gateway", "stopping");
            return 0;

            void Stop(PosixSignalContext context)
            {
                context.Cancel = true;
                stop.TrySetResult();
            }
        });
        WeftCli.Examples(command, "weft gateway --inventory gateway.yaml", "weft gateway --inventory gateway.yaml --http 127.0.0.1:8080 --https off",
            "weft gateway --inventory gateway.yaml --ca-address https://weft-ca:15012 --node-cert node.crt --node-key node.key --trust-bundle bundle.crt",
            "weft gateway --publish-service weft-system/weft-gateway --ca-address https://weft-ca.weft-system.svc:15012 --ca-token-file /var/run/secrets/weft-ca/token --trust-bundle /etc/weft/ca/bundle.crt", "weft gateway --kubeconfig ~/.kube/config --status-address 192.0.2.10");
        return command;
    }

    /// <summary>The gateway's place in the mesh, or null when no CA is given (every backend in plaintext).</summary>
    private static GatewayMeshOptions? MeshFlags(ParseResult cl)
    {
        var lifetime = cl.GetValue(SvidLifetimeSeconds) is >= 1 and var seconds ? TimeSpan.FromSeconds(seconds) : throw new UsageException("--svid-lifetime-seconds wants 1 or more");
        var maxTunnels = cl.GetValue(MaxTunnels) is >= 1 and var max ? max : throw new UsageException("--max-tunnels must be at least 1");
        var identity = AgentCommand.Identity(new AgentCommand.IdentityFlagValues(
            cl.GetRequiredValue(TrustDomain), cl.GetValue(CaCert), cl.GetValue(CaKey), cl.GetValue(TrustBundle), cl.GetValue(CaChain),
            cl.GetValue(CaAddress), cl.GetValue(NodeCert), cl.GetValue(NodeKey), lifetime, TimeSpan.FromSeconds(10), cl.GetValue(CaTokenFile)));
        if (identity is null)
        {
            return null;
        }

        var ns = cl.GetValue(MeshNamespace)
            ?? (Environment.GetEnvironmentVariable("POD_NAMESPACE") is { Length: > 0 } podNamespace ? podNamespace : "weft-gateway");
        return new GatewayMeshOptions(identity, ns, cl.GetRequiredValue(MeshServiceAccount))
        {
            Tunnels = new Weft.Proxy.ProxyOptions { MaxTunnelsPerPod = maxTunnels },
        };
    }

    /// <summary>Spans to an OTLP/HTTP collector at <paramref name="endpoint"/> (the flag, else the standard environment variable), or none.</summary>
    private static GatewayTracingOptions? Tracing(string? endpoint)
    {
        if (endpoint is null)
        {
            return null;
        }

        return Uri.TryCreate(endpoint, UriKind.Absolute, out var uri) && (uri.Scheme == Uri.UriSchemeHttp || uri.Scheme == Uri.UriSchemeHttps) && string.IsNullOrEmpty(uri.Query)
            ? new GatewayTracingOptions(uri)
            : throw new UsageException($"--otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) wants an http:// or https:// URL of an OTLP/HTTP collector, got '{endpoint}'");
    }

    /// <summary>--gateway-http or --gateway-https NS/NAME=ADDRESS:PORT, each Gateway once.</summary>
    private static Dictionary<string, IPEndPoint> GatewayEndpoints(string flag, string[] values)
    {
        var endpoints = new Dictionary<string, IPEndPoint>(StringComparer.Ordinal);
        foreach (var value in values)
        {
            if (GatewayValue(value) is not var (gateway, address) || address == "off" || Endpoint(flag, address) is not { } endpoint)
            {
                throw new UsageException($"{flag} wants NAMESPACE/NAME=ADDRESS:PORT, got '{value}'");
            }

            if (!endpoints.TryAdd(gateway, endpoint))
            {
                throw new UsageException($"{flag} names Gateway {gateway} twice");
            }
        }

        return endpoints;
    }

    /// <summary>"NS/NAME=VALUE" as ("NS/NAME", "VALUE"), or null.</summary>
    private static (string Gateway, string Value)? GatewayValue(string value) =>
        value.Split('=', 2) is [var gateway, { Length: > 0 } rest] && gateway.Split('/') is [{ Length: > 0 }, { Length: > 0 }] ? (gateway, rest) : null;

    /// <summary>
    /// Each address serves one thing: the same ADDRESS:PORT twice (or a port on 0.0.0.0 or :: and the same port on an
    /// address) among --http, --https, --admin, --gateway-http and --gateway-https is refused before anything is bound.
    /// </summary>
    private static void DistinctAddresses(GatewayOptions options)
    {
        var named = new List<(string Flag, IPEndPoint Endpoint)>();
        foreach (var (flag, endpoint) in new[] { ("--http", options.Http), ("--https", options.Https), ("--admin", options.Admin) })
        {
            if (endpoint is not null)
            {
                named.Add((flag, endpoint));
            }
        }

        named.AddRange(options.GatewayHttp.Select(g => ($"{GatewayHttp.Name} {g.Key}", g.Value)));
        named.AddRange(options.GatewayHttps.Select(g => ($"{GatewayHttps.Name} {g.Key}", g.Value)));
        for (var i = 0; i < named.Count; i++)
        {
            for (var j = 0; j < i; j++)
            {
                var (a, b) = (named[j].Endpoint, named[i].Endpoint);
                if (a.Port != 0 && a.Port == b.Port && (a.Address.Equals(b.Address) || Unspecified(a.Address) || Unspecified(b.Address)))
                {
                    throw new UsageException($"{named[i].Flag} {b} overlaps {named[j].Flag} {a}: each address serves one thing; give it another port");
                }
            }
        }
    }

    private static bool Unspecified(IPAddress address) => address.Equals(IPAddress.Any) || address.Equals(IPAddress.IPv6Any);

    /// <summary>
    /// Where each Gateway with an address of its own says it is, in Kubernetes status: --gateway-status-address, else
    /// --gateway-publish-service, else the IPs its own addresses are bound to, unless those are 0.0.0.0 or :: (then it is
    /// left out, and gets the shared address).
    /// </summary>
    internal static Dictionary<string, GatewayStatusOptions> GatewayStatus(GatewayOptions options, string[] statusAddresses, string[] publishServices)
    {
        var own = options.GatewayHttp.Keys.Union(options.GatewayHttps.Keys, StringComparer.Ordinal).ToHashSet(StringComparer.Ordinal);
        var addresses = new Dictionary<string, List<string>>(StringComparer.Ordinal);
        foreach (var value in statusAddresses)
        {
            var (gateway, address) = GatewayValue(value) ?? throw new UsageException($"{GatewayStatusAddress.Name} wants NAMESPACE/NAME=IP|HOST, got '{value}'");
            (addresses.TryGetValue(gateway, out var list) ? list : addresses[gateway] = []).Add(address);
        }

        var services = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var value in publishServices)
        {
            if (GatewayValue(value) is not var (gateway, service) || service.Split('/') is not [{ Length: > 0 }, { Length: > 0 }])
            {
                throw new UsageException($"{GatewayPublishService.Name} wants NAMESPACE/NAME=SERVICENAMESPACE/SERVICENAME, got '{value}'");
            }

            if (!services.TryAdd(gateway, service))
            {
                throw new UsageException($"{GatewayPublishService.Name} names Gateway {gateway} twice");
            }
        }

        foreach (var (flag, gateway) in addresses.Keys.Select(g => (GatewayStatusAddress.Name, g)).Concat(services.Keys.Select(g => (GatewayPublishService.Name, g))))
        {
            if (!own.Contains(gateway))
            {
                throw new UsageException($"{flag} names Gateway {gateway}, which has no address of its own (--gateway-http or --gateway-https): it is served on the shared address, whose status is --status-address or --publish-service");
            }
        }

        var status = new Dictionary<string, GatewayStatusOptions>(StringComparer.Ordinal);
        foreach (var gateway in own)
        {
            var bound = new[] { options.GatewayHttp.GetValueOrDefault(gateway), options.GatewayHttps.GetValueOrDefault(gateway) }
                .OfType<IPEndPoint>().Where(e => !Unspecified(e.Address)).Select(e => e.Address.ToString()).Distinct().ToList();
            if (addresses.TryGetValue(gateway, out var given))
            {
                status[gateway] = new GatewayStatusOptions { Addresses = given };
            }
            else if (services.TryGetValue(gateway, out var service))
            {
                status[gateway] = new GatewayStatusOptions { PublishService = service };
            }
            else if (bound.Count > 0)
            {
                status[gateway] = new GatewayStatusOptions { Addresses = bound };
            }
        }

        return status;
    }

    private static IPEndPoint? Endpoint(string name, string value)
    {
        if (value == "off")
        {
            return null;
        }

        return IPEndPoint.TryParse(value, out var endpoint) && value.Contains(':')
            ? endpoint
            : throw new UsageException($"{name} wants ADDRESS:PORT or off, got '{value}'");
    }
}
