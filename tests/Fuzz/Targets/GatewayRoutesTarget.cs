using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Microsoft.AspNetCore.Http;
using Weft.Gateway;
using Weft.Inventory;

namespace Weft.Fuzz;

/// <summary>
/// The gateway's standalone configuration (an inventory file, YAML or JSON, with Ingress, IngressClass,
/// GatewayClass, Gateway, HTTPRoute, ReferenceGrant, Services, EndpointSlices and TLS Secrets) into the route
/// compiler, then what a request does with the table: a lookup by host and path for a spread of requests,
/// the backend pick, path modifiers and certificate selection by SNI. A file that cannot be read is an
/// <see cref="InventoryLoadException"/>; the compiler turns everything it cannot use into warnings, so any
/// exception from it or from a lookup is a crash.
/// </summary>
internal sealed class GatewayRoutesTarget : IFuzzTarget
{
    private static readonly string[] Hosts = ["example.com", "foo.example.com", "EXAMPLE.NET.", "a.b.example.org", "localhost", ""];

    private static readonly string[] Paths = ["/", "/match/prefix/x", "/v2//example", "/foo/", "/%2e%2e/a"];

    public string Name => "gateway-routes";

    public string Description => "a gateway config (routing objects, YAML or JSON) into the route compiler and lookups";

    public void Run(ReadOnlySpan<byte> input)
    {
        List<k8s.IKubernetesObject> objects;
        try
        {
            objects = InventoryYaml.Load(Encoding.UTF8.GetString(input), "gateway.yaml", GatewayApiKinds.All);
        }
        catch (InventoryLoadException)
        {
            return;
        }

        var table = RouteCompiler.Compile(objects, InventoryBuilder.Build(objects), new GatewayStatusReport());

        // The hosts the table names (a sample name for a wildcard), then a few fixed ones.
        var hosts = table.Http.Hosts.Concat(table.Https.Hosts).Select(h => h.Host.Value.Replace("*", "w", StringComparison.Ordinal))
            .Take(8).Concat(Hosts).Distinct(StringComparer.Ordinal);
        // The paths the routes name (a longer one below each), then a few fixed ones.
        var paths = table.Http.Hosts.Concat(table.Https.Hosts).SelectMany(h => h.Routes).Select(r => r.Path.Value)
            .Where(p => p.StartsWith('/')).Take(4).SelectMany(p => new[] { p, p + "/x" }).Concat(Paths).Distinct(StringComparer.Ordinal).ToList();
        foreach (var rawHost in hosts)
        {
            var host = RouteCompiler.NormalizeHost(rawHost) ?? "";
            _ = table.Certificates.Select(rawHost);
            foreach (var rawPath in paths)
            {
                var path = GatewayServer.NormalizePath(rawPath);
                var request = Request(rawPath);
                Use(table.Http.Match(host, request, path), path);
                Use(table.Https.Match(host, request, path), path);
            }
        }
    }

    private static HttpRequest Request(string path)
    {
        var context = new DefaultHttpContext();
        // No Host header: the lookup takes the host apart from the request (as the server does, normalized), and
        // ASP.NET refuses to set a Host that Kestrel would never have accepted from a client.
        context.Request.Method = path.Length % 2 == 0 ? "GET" : "POST";
        context.Request.Path = path;
        context.Request.QueryString = new QueryString("?q=1&q=2");
        context.Request.Headers["version"] = "two";
        context.Request.Headers["x-a"] = new Microsoft.Extensions.Primitives.StringValues(["a", "b"]);
        return context.Request;
    }

    // What the server does next with a route: pick a backend and an endpoint, rewrite or redirect the path, modify headers.
    private static void Use(Route? route, string path)
    {
        if (route is null)
        {
            return;
        }

        var backend = route.Action.PickBackend();
        _ = backend?.NextEndpoint(_ => false, out _);
        _ = route.Action.Redirect?.Path?.Apply(path, route.Path);
        _ = route.Action.Rewrite?.Path?.Apply(path, route.Path);
        route.Action.RequestHeaders?.Apply(new HeaderDictionary { ["x-header-remove"] = "v", ["version"] = "one" });
        route.Action.ResponseHeaders?.Apply(new HeaderDictionary());
        _ = route.Action.Timeouts?.ToString();
    }

    public IEnumerable<(string Name, byte[] Content)> Seeds()
    {
        const string backends = """
            apiVersion: v1
            kind: Service
            metadata: {name: infra-backend-v1, namespace: infra}
            spec: {clusterIP: 10.96.0.11, ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: infra-backend-v1-0, namespace: infra, labels: {kubernetes.io/service-name: infra-backend-v1}}
            addressType: IPv4
            ports: [{name: http, port: 8080, protocol: TCP}]
            endpoints: [{addresses: [10.244.1.5], conditions: {ready: true}}, {addresses: [10.244.2.5], conditions: {ready: false}}]
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: web-backend, namespace: web}
            spec: {ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: web-backend-0, namespace: web, labels: {kubernetes.io/service-name: web-backend}}
            addressType: IPv6
            ports: [{name: http, port: 8080, protocol: TCP}]
            endpoints: [{addresses: ["fd00::5"], conditions: {ready: true}}]
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: GatewayClass
            metadata: {name: weft}
            spec: {controllerName: weft.dev/gateway}
            ---

            """;
        yield return ("httproute-matches", Encoding.UTF8.GetBytes(backends + """
            apiVersion: gateway.networking.k8s.io/v1
            kind: Gateway
            metadata: {name: same-namespace, namespace: infra}
            spec:
              gatewayClassName: weft
              listeners:
              - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: matching, namespace: infra}
            spec:
              parentRefs: [{name: same-namespace, namespace: infra}]
              hostnames: [example.com, "*.example.com"]
              rules:
              - matches: [{path: {type: PathPrefix, value: /match}}]
                backendRefs: [{name: infra-backend-v1, port: 80, weight: 3}, {name: missing, port: 80}]
              - matches: [{path: {type: Exact, value: /match/exact}}, {path: {type: PathPrefix, value: /match/prefix}, method: POST}]
                backendRefs: [{name: infra-backend-v1, port: 80}]
              - matches: [{path: {type: PathPrefix, value: /match}, headers: [{name: x-a, value: a}, {type: RegularExpression, name: version, value: "t.o"}], queryParams: [{name: q, value: "1"}]}]
                backendRefs: [{name: web-backend, namespace: web, port: 80}]
            ---
            apiVersion: gateway.networking.k8s.io/v1beta1
            kind: ReferenceGrant
            metadata: {name: infra-routes, namespace: web}
            spec:
              from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]
              to: [{group: "", kind: Service}]
            """));
        yield return ("httproute-filters", Encoding.UTF8.GetBytes(backends + """
            apiVersion: gateway.networking.k8s.io/v1
            kind: Gateway
            metadata: {name: gw, namespace: infra}
            spec:
              gatewayClassName: weft
              listeners:
              - {name: http, port: 80, protocol: HTTP, hostname: "*.example.com"}
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: filters, namespace: infra}
            spec:
              parentRefs: [{name: gw, sectionName: http}]
              rules:
              - matches: [{path: {type: PathPrefix, value: /v2}}]
                filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.org, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
              - matches: [{path: {type: PathPrefix, value: /foo}}]
                filters:
                - {type: URLRewrite, urlRewrite: {hostname: rewritten.example, path: {type: ReplaceFullPath, replaceFullPath: /bar}}}
                - type: RequestHeaderModifier
                  requestHeaderModifier: {set: [{name: X-Header-Set, value: s}], add: [{name: X-Header-Add, value: a}], remove: [X-Header-Remove]}
                - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: X-Out, value: o}]}}
                backendRefs: [{name: infra-backend-v1, port: 80}]
            """));
        var (crt, key) = SelfSigned("secure.example.com");
        var secret = $$$"""
            apiVersion: v1
            kind: Secret
            metadata: {name: secure, namespace: infra}
            type: kubernetes.io/tls
            data: {tls.crt: {{{crt}}}, tls.key: {{{key}}}}
            ---

            """;
        yield return ("https-listener-and-secret", Encoding.UTF8.GetBytes(backends + secret + """
            apiVersion: gateway.networking.k8s.io/v1
            kind: Gateway
            metadata: {name: gw, namespace: infra}
            spec:
              gatewayClassName: weft
              listeners:
              - name: https
                port: 443
                protocol: HTTPS
                hostname: secure.example.com
                tls: {mode: Terminate, certificateRefs: [{kind: Secret, name: secure}]}
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: secure, namespace: infra}
            spec:
              parentRefs: [{name: gw}]
              rules: [{backendRefs: [{name: infra-backend-v1, port: 80}]}]
            """));
        yield return ("ingress-rules-and-tls", Encoding.UTF8.GetBytes(backends + secret + """
            apiVersion: networking.k8s.io/v1
            kind: IngressClass
            metadata: {name: mesh, annotations: {ingressclass.kubernetes.io/is-default-class: "true"}}
            spec: {controller: weft.dev/gateway}
            ---
            apiVersion: networking.k8s.io/v1
            kind: Ingress
            metadata: {name: ing, namespace: infra}
            spec:
              tls: [{hosts: [secure.example.com], secretName: secure}]
              defaultBackend: {service: {name: infra-backend-v1, port: {number: 80}}}
              rules:
              - host: "*.example.com"
                http:
                  paths:
                  - {pathType: Prefix, path: /foo/, backend: {service: {name: infra-backend-v1, port: {name: http}}}}
                  - {pathType: Exact, path: /match/prefix/x, backend: {service: {name: infra-backend-v1, port: {number: 80}}}}
                  - {pathType: ImplementationSpecific, path: /v2, backend: {service: {name: nowhere, port: {number: 81}}}}
            """));
        yield return ("json-ingress", Encoding.UTF8.GetBytes("""
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"svc","namespace":"default"},"spec":{"ports":[{"name":"http","port":80,"targetPort":8080}]}}
            ---
            {"apiVersion":"networking.k8s.io/v1","kind":"Ingress","metadata":{"name":"j","namespace":"default"},"spec":{"ingressClassName":"weft","rules":[{"host":"example.com","http":{"paths":[{"path":"/","pathType":"Prefix","backend":{"service":{"name":"svc","port":{"number":80}}}}]}}]}}
            """));
        yield return ("httproute-timeouts", Encoding.UTF8.GetBytes(backends + """
            apiVersion: gateway.networking.k8s.io/v1
            kind: Gateway
            metadata: {name: gw, namespace: infra}
            spec:
              gatewayClassName: weft
              listeners: [{name: http, port: 80, protocol: HTTP}]
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: timeouts, namespace: infra}
            spec:
              parentRefs: [{name: gw}]
              rules:
              - matches: [{path: {type: PathPrefix, value: /match}}]
                backendRefs: [{name: infra-backend-v1, port: 80}]
                timeouts: {request: 10s, backendRequest: 1m30s}
              - matches: [{path: {type: PathPrefix, value: /foo}}]
                backendRefs: [{name: infra-backend-v1, port: 80}]
                timeouts: {request: 500ms}
              - matches: [{path: {type: PathPrefix, value: /v2}}]
                backendRefs: [{name: infra-backend-v1, port: 80}]
                timeouts: {request: 0s, backendRequest: 1h1m1s1ms}
              - backendRefs: [{name: infra-backend-v1, port: 80}]
                timeouts: {request: 1d}
            """));
        yield return ("httproute-bad-refs", Encoding.UTF8.GetBytes(backends + """
            apiVersion: gateway.networking.k8s.io/v1
            kind: Gateway
            metadata: {name: gw, namespace: infra}
            spec:
              gatewayClassName: other
              listeners: [{name: http, port: 80, protocol: TCP}]
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: bad, namespace: infra}
            spec:
              parentRefs: [{name: gw, sectionName: nope}, {name: absent}]
              hostnames: ["*", "-bad-"]
              rules:
              - matches: [{path: {type: RegularExpression, value: "(a+)+$"}}, {path: {type: PathPrefix, value: "no-slash"}}]
                backendRefs: [{name: web-backend, namespace: web, port: 80, weight: 0}, {group: x, kind: Y, name: z}]
            """));
    }

    private static (string Crt, string Key) SelfSigned(string name)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(name);
        request.CertificateExtensions.Add(san.Build());
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddYears(10));
        return (Convert.ToBase64String(Encoding.UTF8.GetBytes(certificate.ExportCertificatePem())), Convert.ToBase64String(Encoding.UTF8.GetBytes(key.ExportPkcs8PrivateKeyPem())));
    }
}
