using System.Net;
using System.Security.Cryptography.X509Certificates;
using Weft.Gateway;
using Weft.Identity;

namespace Weft.Tests.Gateway;

/// <summary>Which endpoints the gateway reaches over HBONE and as whom, decided from the inventory alone.</summary>
public class GatewayMeshDecisionTests
{
    private const string Yaml = """
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop, labels: {weft.dev/mesh: enabled}}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: legacy}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: cart-1, namespace: shop, labels: {app: cart}}
        spec: {nodeName: node2, serviceAccountName: cart-sa, containers: [{name: app, image: cart}]}
        status: {podIP: 10.244.2.7, phase: Running}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: opted-out, namespace: shop, labels: {app: batch, weft.dev/mesh: disabled}}
        spec: {nodeName: node2, serviceAccountName: batch, containers: [{name: app, image: batch}]}
        status: {podIP: 10.244.2.8, phase: Running}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: node-exporter, namespace: shop, labels: {app: exporter}}
        spec: {nodeName: node2, hostNetwork: true, serviceAccountName: exporter, containers: [{name: app, image: exporter}]}
        status: {podIP: 192.168.1.2, phase: Running}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: old-1, namespace: legacy, labels: {app: old}}
        spec: {nodeName: node2, serviceAccountName: old, containers: [{name: app, image: old}]}
        status: {podIP: 10.244.2.9, phase: Running}
        """;

    [Theory]
    [InlineData("10.244.2.7", "spiffe://mesh.example/ns/shop/sa/cart-sa")]
    [InlineData("10.244.2.8", null)]
    [InlineData("192.168.1.2", null)]
    [InlineData("10.244.2.9", null)]
    [InlineData("127.0.0.1", null)]
    [InlineData("10.244.3.3", null)]
    public void Endpoint_RidesHboneToItsServiceAccount_OnlyWhenItIsAMeshedPodOffTheHostNetwork(string address, string? expected)
    {
        var (_, inventory) = GatewayYaml.Load(Yaml);

        var plan = GatewayMesh.Decide(inventory, IPAddress.Parse(address), "mesh.example");

        Assert.Equal(expected, plan.Destination?.ToString());
        Assert.Equal(expected is not null, plan.IsTunnel);
    }

    [Fact]
    public async Task GatewayWithLocalCaFiles_HoldsItsOwnIdentity_RenewsItPastHalfLife_AndStillReachesUnmeshedBackendsInPlaintext()
    {
        var dir = Directory.CreateTempSubdirectory("weft-gateway-ca-").FullName;
        try
        {
            var ca = SelfSignedRoot.Write(dir, "mesh.example");
            await using var gateway = new GatewayLoopback();
            var backend = await gateway.BackendAsync("plain");
            var identity = new IdentityOptions("mesh.example", ca) { SvidLifetime = TimeSpan.FromSeconds(4), WatchFiles = false };
            using var mesh = await GatewayMesh.StartAsync(new GatewayMeshOptions(identity, "edge", "gw"), () => gateway.Config.Store.Current);
            await gateway.StartAsync(GatewayYaml.Service("default", "plain", backend.Port) + """
                ---
                apiVersion: networking.k8s.io/v1
                kind: Ingress
                metadata: {name: plain, namespace: default}
                spec:
                  ingressClassName: weft
                  rules:
                  - host: plain.example
                    http: {paths: [{pathType: Prefix, path: /, backend: {service: {name: plain, port: {number: 80} } } }]}
                """, mesh: mesh);

            var first = await mesh.CertificateAsync();
            Assert.Equal("spiffe://mesh.example/ns/edge/sa/gw", first.Id.ToString());
            Assert.Equal("spiffe://mesh.example/ns/edge/sa/gw", first.Certificate.GetNameInfo(X509NameType.UrlName, forIssuer: false));
            using var root = X509Certificate2.CreateFromPem(File.ReadAllText(ca.CertificatePath));
            Assert.Equal(root.Subject, first.Certificate.Issuer);
            Assert.Equal("plain", (await gateway.EchoAsync("plain.example", "/")).Backend);

            // Past half life the next tunnel gets a new certificate; plaintext backends never needed one.
            var halfLife = first.RenewAt - DateTimeOffset.UtcNow + TimeSpan.FromMilliseconds(200);
            if (halfLife > TimeSpan.Zero)
            {
                await Task.Delay(halfLife);
            }

            var renewed = await mesh.CertificateAsync();
            Assert.NotEqual(first.Certificate.SerialNumber, renewed.Certificate.SerialNumber);
            Assert.True(renewed.NotAfter > first.NotAfter);
            Assert.Equal("plain", (await gateway.EchoAsync("plain.example", "/")).Backend);
            Assert.Equal(2, backend.Requests);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
